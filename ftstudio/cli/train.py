"""`ftstudio train [CONFIG.yaml] [flags]`: a full fine-tune from the terminal."""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .flags import add_config_flags, apply_config_flags


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(func=run)


def load_config(args: argparse.Namespace):
    from ftstudio.core.config import RunConfig

    if args.resume:
        run_dir = Path(args.resume)
        cfg = RunConfig.load(run_dir / "config.yaml")
    elif args.config:
        cfg = RunConfig.load(args.config)
    else:
        cfg = RunConfig()
    if args.demo:
        cfg = cfg.replace(source="demo", dataset="demo")
    if getattr(args, "preset", None):
        from ftstudio.core.presets import apply_preset
        cfg = apply_preset(cfg, args.preset)      # flags given too still override the preset
    return apply_config_flags(cfg, args)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.control import Control
    from ftstudio.core.errors import FTStudioError

    from . import fail
    from .console import ConsoleSink

    try:
        cfg = load_config(args)
    except FTStudioError as e:
        return fail(str(e))
    control = Control()
    _install_sigint(control)
    sink = ConsoleSink(quiet=args.quiet)
    from ftstudio.engine import run as train

    try:
        result = train(cfg, sink, control, resume_from=args.resume)
    finally:
        sink.close()
    if args.json:
        print(json.dumps(_summary(result), default=str))
    return 0 if getattr(result, "status", "failed") in ("finished", "stopped") else 1


def _summary(result) -> dict:
    d = result.to_dict()
    if d.pop("event") == "failed":
        return {"status": "failed", "reason": d["reason"], "advice": d["advice"], "steps": d["step"],
                "output_dir": d["output_dir"]}
    return {"status": d["status"], "steps": d["steps"], "train_loss": d["train_loss"], "eval": d["eval"],
            "output_dir": d["output_dir"], "final_model": d["final_model"], "elapsed_s": d["elapsed_s"],
            "stop_reason": d["stop_reason"], "best_step": d["best_step"]}


def _install_sigint(control) -> None:
    """First Ctrl-C: stop after this step and save a checkpoint. Second: quit at once."""
    def handler(signum, frame):
        if control.stop_requested:
            raise KeyboardInterrupt
        print("\nStopping after this step (a checkpoint is saved); Ctrl-C again to quit now.", file=sys.stderr)
        control.request_stop()
    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        pass
