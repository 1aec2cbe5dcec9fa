"""`ftstudio estimate MODEL|--params N --hidden D --layers L [...]`: will the run fit? No torch import."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    from ftstudio.core.config import LOSSES, OPTIMIZERS, PRECISIONS

    p = sub.add_parser("estimate", help="plan the GPU memory of a run (weights, gradients, optimizer, activations)")
    p.add_argument("model", nargs="?", help="a model folder, a config.json, or a cached hub id")
    p.add_argument("--params", type=float, help="parameter count (instead of MODEL), e.g. 7e9")
    p.add_argument("--hidden", type=int, help="hidden size d (with --params)")
    p.add_argument("--layers", type=int, help="number of layers L (with --params)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--precision", choices=[x for x in PRECISIONS if x != "auto"], default="bf16-mixed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--loss", choices=LOSSES, default="full")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs sharing the state (FSDP)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one card in GB (default 80)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine.memory_report import estimate_report, format_report

    from . import fail

    if not args.model and not (args.params and args.hidden and args.layers):
        return fail("give MODEL (a folder, config.json or cached hub id) or --params, --hidden and --layers")
    try:
        report = estimate_report(args.model, params=args.params, hidden=args.hidden, layers=args.layers,
                                 seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                 precision=args.precision, optimizer=args.optimizer, loss=args.loss,
                                 activation_checkpointing=args.activation_checkpointing, gpus=args.gpus,
                                 gpu_memory_gb=args.gpu_memory)
    except FTStudioError as e:
        return fail(str(e))
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))
    return 0
