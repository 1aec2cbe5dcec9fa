"""`ftstudio train [CONFIG.yaml] [flags]`: a full fine-tune from the terminal.

Before the engine starts (and so before a run folder exists) the verb refuses, in one line each: a `--resume` of
a folder that is not a run, has no complete checkpoint or has finished, or given another model, dataset, YAML or
any other setting than the run's own config.yaml; `--gpus` where torch sees no such CUDA GPU; and a model whose
config.json cannot be trained (numbers as strings, an encoder-decoder, a vision model) or whose context length is
shorter than `--seq-len`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .flags import add_config_flags, apply_config_flags
from ftstudio.core.events import train_loss_label


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model (flags override CONFIG.yaml)",
                       description="Fully fine-tune a model. Flags override the YAML; --demo picks the bundled "
                                   "model and dataset.")
    p.add_argument("config", nargs="?", help="a run config YAML (see `ftstudio gui`: File → Save config)")
    p.add_argument("--demo", action="store_true", help="the bundled demo: all-MiniLM-L6-v2 on legal clauses")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint "
                                                        "(reads the run's own config.yaml)")
    p.add_argument("--preset", metavar="NAME", help="apply a named preset before the flags: 'Safe defaults', "
                                                     "'Reference', 'Fastest', 'Largest' (core/presets.py)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar (warnings and what changes the training "
                                                         "are still printed)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although config.yaml (or a flag) differs from what the checkpoint "
                        "trained; each change is listed, applies from the resumed step, and is written to "
                        "config.yaml")
    add_config_flags(p)
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace):
    from ftstudio.core.config import RunConfig

    if args.resume:
        return _resume_config(args)
    cfg = RunConfig.load(args.config) if args.config else RunConfig()
    return _overrides(cfg, args)


def _overrides(cfg, args: argparse.Namespace):
    """--demo, then --preset, then the flags, over ``cfg``."""
    if args.demo:
        cfg = cfg.replace(source="demo", dataset="demo")
    if getattr(args, "preset", None):
        from ftstudio.core.presets import apply_preset
        cfg = apply_preset(cfg, args.preset)      # flags given too still override the preset
    return apply_config_flags(cfg, args)


def _resume_config(args: argparse.Namespace):
    """The run's own config.yaml, once RUN_DIR is known to be a resumable run and nothing asked differs from it."""
    from ftstudio.core.config import RunConfig, flag_name
    from ftstudio.core.errors import ConfigError
    from ftstudio.core.runs import read_metrics

    run_dir = Path(args.resume)
    if not run_dir.exists():
        raise ConfigError("--resume", f"{run_dir} not found: no such run folder (a run folder holds config.yaml, "
                                      "e.g. runs/<date>-<model>)")
    if not run_dir.is_dir():
        raise ConfigError("--resume", f"{run_dir} is a file; give the run folder that holds its config.yaml")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("--resume", f"{run_dir} is not a run folder (it has no config.yaml)")
    run_cfg = RunConfig.load_run(run_dir / "config.yaml")
    asked = _overrides(RunConfig.load(args.config) if args.config else run_cfg, args)
    if getattr(args, "allow_config_change", False):
        run_cfg = asked   # the engine lists each change against the checkpoint and records it in config.yaml
    theirs, ours = run_cfg.to_dict(), asked.to_dict()
    diffs = [f"{flag_name(k)} {ours[sec][k]!r} (the run has {v!r})" for sec, fields in theirs.items()
             for k, v in fields.items() if ours[sec][k] != v]
    if diffs:
        where = f"{args.config} differs from the run's config.yaml" if args.config else "these settings differ"
        raise ConfigError("--resume", f"{where}: {'; '.join(diffs[:4])}{' and more' if len(diffs) > 4 else ''}. "
                                      f"A resumed run continues exactly as {run_dir / 'config.yaml'} says; start a "
                                      "new run to change it, or add --allow-config-change to continue with the change")
    from ftstudio.engine.train.checkpoint import latest_checkpoint, read_state
    done = [e for e in read_metrics(run_dir) if e.get("event") == "finished" and e.get("status") == "finished"]
    last = latest_checkpoint(run_dir / "checkpoints")
    final = run_dir / "final"
    if done and not (final / "config.json").is_file() and last is not None \
            and (read_state(last).get("extra") or {}).get("ended") is not None:
        return run_cfg   # finished, its final/ still to write from the end checkpoint (`ftstudio export RUN`)
    if done:
        then = (f"Start a new run, e.g. from its weights with --model {final}" if (final / "config.json").is_file()
                else f"It has no final/ model; write it with: ftstudio export {run_dir}" if last is not None
                else "It kept no weights (no final/, no checkpoint); train it again")
        raise ConfigError("--resume", f"{run_dir} finished (step {done[-1].get('steps')}); its metrics are final. "
                                      f"{then}")
    if last is None:
        raise ConfigError("--resume", f"{run_dir} has no complete checkpoint to resume from (checkpoints are "
                                      "saved with --checkpoint-every N, and when a run is stopped)")
    try:    # another process may be writing this folder: its run lock refuses this one after, with its own line
        reached = read_state(last).get("step") or 0
    except Exception:  # noqa: BLE001 - unreadable here: the resume itself reads it again and says why
        reached = 0
    if run_cfg.train.max_steps and run_cfg.train.max_steps < reached:   # a changed config (--allow-config-change)
        raise ConfigError("train.max_steps", f"{run_cfg.train.max_steps} is below step {reached}, where {run_dir} "
                                             "resumes: nothing would train, and the run would be marked finished; "
                                             f"give --max-steps above {reached}")
    source = run_cfg.model.source
    local = Path(source).expanduser()
    if (local.is_absolute() or source.startswith((".", "~"))) and not local.exists():
        raise ConfigError("model.source", f"{source}, the base model {run_dir / 'config.yaml'} names, is gone "
                                          "(moved or deleted); put it back there, or continue from where it is "
                                          f"now with: ftstudio train --resume {run_dir} --model NEW_PATH "
                                          "--allow-config-change")
    return run_cfg


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.control import Control
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine import check_run

    from . import fail
    from .console import ConsoleSink

    try:
        cfg = load_config(args)
        check_run(cfg)
    except FTStudioError as e:
        return fail(str(e))
    control = Control()
    signals = _install_sigint(control)
    sink = ConsoleSink(quiet=args.quiet)
    from ftstudio.engine import run as train

    try:
        result = train(cfg, sink, control, resume_from=args.resume,
                       allow_config_change=getattr(args, "allow_config_change", False))
    finally:
        sink.close()
    if args.json:
        print(json.dumps(_summary(result), default=str))
    status = getattr(result, "status", "failed")
    if status == "stopped":
        from ftstudio.engine.train.keeping import resume_command
        _say(f"Stopped at step {result.steps}; continue with: {resume_command(result.output_dir)}")
        return signals.exit_code if signals is not None else 1
    return 0 if status == "finished" else 1


def _summary(result) -> dict:
    d = result.to_dict()
    if d.pop("event") == "failed":
        return {"status": "failed", "reason": d["reason"], "advice": d["advice"], "steps": d["step"],
                "output_dir": d["output_dir"]}
    return {"status": d["status"], "steps": d["steps"], "train_loss": d["train_loss"],
            "train_loss_is": train_loss_label(result), "eval": d["eval"],
            "output_dir": d["output_dir"], "final_model": d["final_model"], "elapsed_s": d["elapsed_s"],
            "stop_reason": d["stop_reason"], "best_step": d["best_step"]}


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):   # stderr gone (a closed terminal) or full: the run's files still say it
        pass


def _install_sigint(control):
    """SIGINT, SIGTERM and SIGHUP: the first stops after this step and saves a checkpoint; a second quits at once
    (core/control.py's SignalStop). Returns it (its ``exit_code`` is the stopped run's status)."""
    from ftstudio.core.control import SignalStop
    return SignalStop(control, _say).install()
