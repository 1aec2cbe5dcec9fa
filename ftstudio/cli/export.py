"""`ftstudio export RUN_DIR|MODEL_DIR --gguf OUT.gguf [--gguf-type f16|bf16|q8_0] [--json]`: the fine-tuned
causal LM as one GGUF file for llama.cpp and Ollama, with its tokenizer, chat template and end-of-turn token,
and an Ollama Modelfile beside it (OUT.Modelfile)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's final/ model (or a model folder) as GGUF for llama.cpp / Ollama")
    p.add_argument("source", metavar="RUN_DIR|MODEL_DIR",
                   help="a run folder (its final/ is exported) or a saved Hugging Face model folder")
    p.add_argument("--gguf", metavar="OUT.gguf", required=True,
                   help="the GGUF file to write (a folder: <run name>-<type>.gguf inside it)")
    p.add_argument("--gguf-type", choices=("f16", "bf16", "q8_0"), default="f16",
                   help="tensor type: f16 (default, exact enough to match final/), bf16, or q8_0 (8-bit, half the "
                        "size); norms and biases stay float32")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine.models.gguf_export import export_gguf

    from . import fail

    try:
        result = export_gguf(args.source, args.gguf, args.gguf_type)
    except FTStudioError as e:
        return fail(str(e))
    except OSError as e:
        return fail(f"{args.gguf}: cannot write the GGUF file ({e.strerror or e})")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary())
    print(f"Run it: llama-cli -m {result.path} -cnv --jinja   ·   Ollama: ollama create NAME -f {result.modelfile}")
    if args.json:
        print(json.dumps(dataclasses.asdict(result), default=str))
    return 0
