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
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per row (default 2048, or the model's context length when that is shorter)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--preset", help="start from a preset (e.g. fastest, largest); the flags below override it")
    p.add_argument("--precision", choices=[x for x in PRECISIONS if x != "auto"], help="default bf16-mixed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adamw")
    p.add_argument("--loss", choices=LOSSES, help="default full")
    p.add_argument("--activation-checkpointing", action="store_true", default=None)
    p.add_argument("--offload-activations", action="store_true", default=None,
                   help="checkpointed block inputs in pinned CPU memory (implies --activation-checkpointing)")
    p.add_argument("--optimizer-in-backward", action="store_true", default=None,
                   help="the optimizer step inside backward: one gradient tensor at a time")
    p.add_argument("--method", choices=("sft", "dpo", "simpo"), help="the objective (train.method); default sft")
    p.add_argument("--dpo-reference", choices=("auto", "precompute", "model"),
                   help="where DPO's reference log-probabilities come from; both options' costs are shown")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs sharing the state (FSDP)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one card in GB (default 80)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.config import RunConfig
    from ftstudio.core.errors import FTStudioError
    from ftstudio.core.presets import apply_preset
    from ftstudio.engine.memory import estimate_report, format_report

    from . import fail

    if not args.model and None in (args.params, args.hidden, args.layers):
        return fail("give MODEL (a folder, config.json or cached hub id) or --params, --hidden and --layers")
    try:
        base = apply_preset(RunConfig(), args.preset) if args.preset else RunConfig()
        base = base.replace(**{k: v for k, v in (("method", args.method), ("dpo_reference", args.dpo_reference))
                               if v is not None})
        m = base.memory
        ckpt = args.activation_checkpointing or args.offload_activations or m.activation_checkpointing
        base = base.replace(activation_checkpointing=bool(ckpt),
                            offload_activations=bool(args.offload_activations or m.offload_activations),
                            optimizer_in_backward=bool(args.optimizer_in_backward or m.optimizer_in_backward))
        precision = args.precision or (base.hardware.precision if base.hardware.precision != "auto"
                                       else "bf16-mixed")
        report = estimate_report(args.model, params=args.params, hidden=args.hidden, layers=args.layers,
                                 seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum,
                                 precision=precision, optimizer=args.optimizer or base.optim.optimizer,
                                 loss=args.loss or m.loss, activation_checkpointing=bool(ckpt), gpus=args.gpus,
                                 gpu_memory_gb=args.gpu_memory, run_config=base)
    except FTStudioError as e:
        return fail(str(e))
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))
    return 0
