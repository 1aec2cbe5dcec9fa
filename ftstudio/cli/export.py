"""`ftstudio export RUN_DIR|MODEL_DIR --gguf OUT.gguf [--gguf-type f16|bf16|q8_0] [--json]`: the fine-tuned
causal LM as one GGUF file for llama.cpp and Ollama, with its tokenizer, chat template and end-of-turn token,
and an Ollama Modelfile beside it (OUT.Modelfile).

`ftstudio export RUN_DIR` (no --gguf) finishes a run whose own export to final/ failed or was killed: its weights
wait in the end checkpoint the trainer wrote before exporting; the run is resumed from it (no step trains again),
evaluated and exported."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's final/ model (or a model folder) as GGUF for llama.cpp / Ollama")
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR",
                   help="a run folder (its final/ is exported) or a saved Hugging Face model folder")
    p.add_argument("--gguf", metavar="OUT.gguf",
                   help="the GGUF file to write (a folder: <run name>-<type>.gguf inside it); without it, a run "
                        "whose export to final/ did not complete is finished from its end checkpoint")
    p.add_argument("--gguf-type", choices=("f16", "bf16", "q8_0"), default="f16",
                   help="tensor type: f16 (default, exact enough to match final/), bf16, or q8_0 (8-bit, half the "
                        "size); norms and biases stay float32")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine.models.gguf_export import export_gguf

    from . import fail

    if not args.gguf:
        return _finish_final(args.source)
    try:
        result = export_gguf(args.source, args.gguf, args.gguf_type)
    except FTStudioError as e:
        return fail(str(e))
    except Exception as e:  # noqa: BLE001 - OSError, or the writer's own error on a full disk
        from ftstudio.core.atomic import disk_full_message, is_disk_full
        if is_disk_full(e):
            return fail(f"cannot write the GGUF file: {disk_full_message(args.gguf)}; no partial file was left; "
                        "free some space and run the same command again", 1)
        if isinstance(e, OSError):
            return fail(f"{args.gguf}: cannot write the GGUF file ({e.strerror or e})")
        raise
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary())
    print(f"Run it: llama-cli -m {result.path} -cnv --jinja   ·   Ollama: ollama create NAME -f {result.modelfile}")
    if args.json:
        print(json.dumps(dataclasses.asdict(result), default=str))
    return 0


def _finish_final(source: str) -> int:
    """Resume a run from its end checkpoint (marked ``ended`` by the trainer) to write final/."""
    from pathlib import Path

    from ftstudio.engine.train.checkpoint import latest_checkpoint, read_state
    from ftstudio.engine.train.keeping import resume_command

    from . import fail, main

    run = Path(source)
    if (run / "final" / "config.json").is_file():
        print(f"{run / 'final'} is complete; nothing to do (add --gguf OUT.gguf to write a GGUF file)")
        return 0
    if not (run / "config.yaml").is_file():
        return fail(f"{run}: not a run folder (it has no config.yaml); give --gguf OUT.gguf to convert a model folder")
    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        return fail(f"{run}: no complete checkpoint holds its weights; the run must be trained again")
    if (read_state(ckpt).get("extra") or {}).get("ended") is None:
        if not _finished_without_export(run, ckpt):
            return fail(f"{run} stopped at {ckpt.name}, before its end; continue it with: {resume_command(run)}")
        # Trained to its end with the export off (--no-export): its last checkpoint holds the end weights. Mark it
        # the run's end and turn the export on in config.yaml (it changes nothing trained); the resume below then
        # evaluates and exports without training further.
        from ftstudio.core.atomic import atomic_write_text
        from ftstudio.core.config import RunConfig
        from ftstudio.engine.train.checkpoint import mark_ended

        mark_ended(ckpt, "finished")
        atomic_write_text(run / "config.yaml", RunConfig.load_run(run / "config.yaml").replace(export=True).to_yaml())
        print(f"{run} finished with the export off; writing final/ from its end checkpoint {ckpt.name}")
    return main(["train", "--resume", str(run)])


def _finished_without_export(run, ckpt) -> bool:
    """The run finished with ``checkpoint.export`` off, and ``ckpt`` is of its last step."""
    from ftstudio.core.config import RunConfig
    from ftstudio.core.runs import read_metrics
    from ftstudio.engine.train.checkpoint import read_state

    done = [e for e in read_metrics(run) if e.get("event") == "finished" and e.get("status") == "finished"]
    return (bool(done) and not RunConfig.load_run(run / "config.yaml").checkpoint.export
            and read_state(ckpt).get("step") == done[-1].get("steps"))
