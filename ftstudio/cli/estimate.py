"""`ftstudio estimate MODEL|--params N --hidden D --layers L [CONFIG flags]`: will the run fit?

With a MODEL the plan is for the run `ftstudio train` would start with the same flags and config file: every
`train` flag is taken, the fast defaults' choices are made by the trainer's own function and said, the data file
(when given) sets the real row lengths, and the activations come from the model's own step traced on fake tensors
(`--no-trace`: the closed form alone). `--params/--hidden/--layers` plan the seed's LLaMA-like shape with the
closed form and import no torch."""
from __future__ import annotations

import argparse
import json

# the leaves this verb defines itself (its defaults and help predate the train flags)
OWN = ("batch_size", "seq_len", "grad_accum", "precision", "optimizer", "loss", "activation_checkpointing",
       "offload_activations", "optimizer_in_backward", "gpus", "gpu_memory")
CARD_GB = 80.0           # the card planned for when --gpu-memory is not given


def add_parser(sub) -> None:
    from ftstudio.core.config import LOSSES, OPTIMIZERS, PRECISIONS

    from .flags import add_config_flags

    p = sub.add_parser("estimate", help="plan the GPU memory of a run (weights, gradients, optimizer, activations)")
    p.add_argument("model", nargs="?", help="a model folder, a config.json, or a cached hub id")
    p.add_argument("--config", metavar="RUN.yaml", help="a run config YAML, as `ftstudio train` takes it; flags "
                                                          "override it")
    p.add_argument("--demo", action="store_true", help="the bundled demo (model and data), as `ftstudio train --demo`")
    p.add_argument("--params", type=float, help="parameter count (instead of MODEL), e.g. 7e9")
    p.add_argument("--hidden", type=int, help="hidden size d (with --params)")
    p.add_argument("--layers", type=int, help="number of layers L (with --params)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per micro-batch (default: the config's; 1 with --params)")
    p.add_argument("--seq-len", type=int, default=None,
                   help="tokens per row (default: the config's, or 2048 with --params; never beyond the model's "
                        "context length)")
    p.add_argument("--grad-accum", type=int, default=None)
    p.add_argument("--preset", help="start from a preset (e.g. fastest, largest); the flags below override it")
    p.add_argument("--precision", choices=[x for x in PRECISIONS if x != "auto"], help="default bf16-mixed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default adamw")
    p.add_argument("--loss", choices=LOSSES, help="default full")
    on_off = argparse.BooleanOptionalAction   # --no-X turns off what a preset or the config file turned on, as in train
    p.add_argument("--activation-checkpointing", action=on_off, default=None)
    p.add_argument("--offload-activations", action=on_off, default=None,
                   help="checkpointed block inputs in pinned CPU memory (implies --activation-checkpointing)")
    p.add_argument("--optimizer-in-backward", action=on_off, default=None,
                   help="the optimizer step inside backward: one gradient tensor at a time")
    p.add_argument("--gpus", type=gpu_count, default=None, metavar="N|0,1",
                   help="GPUs sharing the state (FSDP): a count, or train's list of indices (default: the config "
                        "file's list, else 1)")
    p.add_argument("--gpu-memory", type=float, default=None,
                   help="memory of one card in GB (default 80); given, it is also the budget the run is fitted to, "
                        "as `train --gpu-memory` fits it (the plan is of the run train would start)")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="the closed form only (no torch): skip tracing the model's step on fake tensors")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON on the last line of stdout")
    add_config_flags(p, skip=OWN)
    p.set_defaults(func=run)


def gpu_count(text: str) -> int:
    """``--gpus``: a count ("4") or, as ``train --gpus`` takes it, a list of GPU indices ("0,1", "[0, 1]")."""
    items = [x.strip() for x in text.strip().strip("[]").split(",") if x.strip()]
    try:
        numbers = [int(x) for x in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (give a number of GPUs, e.g. 4, or GPU "
                                         "indices, e.g. 0,1)") from None
    if len(numbers) == 1:
        if numbers[0] < 1:
            raise argparse.ArgumentTypeError(f"{numbers[0]} must be positive")
        return numbers[0]
    if not numbers or min(numbers) < 0 or len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: GPU indices must be distinct numbers from 0, e.g. 0,1")
    return len(numbers)


def _run_config(args: argparse.Namespace):
    """The RunConfig `train` would get from the same config file, preset and flags (then this verb's own)."""
    from ftstudio.core.config import RunConfig
    from ftstudio.core.presets import apply_preset

    base = RunConfig.load(args.config) if args.config else RunConfig()
    if getattr(args, "demo", False):        # as train's --demo: before the preset and the flags, which override it
        base = base.replace(source="demo", dataset="demo")
    if args.preset:
        base = apply_preset(base, args.preset)
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}
    if args.model:
        flags["source"] = args.model
    m = base.memory

    def given(flag, leaf: bool) -> bool:
        return bool(leaf if flag is None else flag)

    offload = given(args.offload_activations, flags.get("offload_activations", m.offload_activations))
    own = {"activation_checkpointing": given(args.activation_checkpointing, flags.get(
               "activation_checkpointing", m.activation_checkpointing)) or offload,
           "offload_activations": offload,
           "optimizer_in_backward": given(args.optimizer_in_backward, flags.get("optimizer_in_backward",
                                                                                m.optimizer_in_backward))}
    for leaf in ("batch_size", "grad_accum", "optimizer", "loss", "precision"):
        if getattr(args, leaf) is not None:
            own[leaf] = getattr(args, leaf)
    # one replace: a flag that needs another (--checkpoint-blocks needs --activation-checkpointing) is checked
    # against all of them, as train checks its flags
    return base.replace(**{**flags, **own})


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine.memory import estimate_report, format_report

    from . import fail

    if not args.model and (args.config or args.cfg_source or getattr(args, "demo", False)):
        try:                                  # the model named by the config file or --model
            args.model = _run_config(args).model.source
        except FTStudioError as e:
            return fail(str(e))
    if not args.model and None in (args.params, args.hidden, args.layers):
        return fail("give MODEL (a folder, config.json or cached hub id), --demo, or --params, --hidden and --layers")
    card = CARD_GB if args.gpu_memory is None else args.gpu_memory
    try:
        if args.gpus is None:                 # as train: the config file's GPU list, else one device
            args.gpus = max(1, len(_run_config(args).hardware.gpus)) if args.config else 1
        from ftstudio.engine.memory.report import _check_sizes   # this verb's own sizes, named by their flags
        _check_sizes(params=args.params, hidden=args.hidden, layers=args.layers, seq_len=args.seq_len,
                     batch_size=args.batch_size, grad_accum=args.grad_accum, gpus=args.gpus,
                     gpu_memory_gb=card)
        cfg = _run_config(args)
        seeded = args.model is None          # the seed's table keeps its own defaults (b = 1, s = 2048)
        precision = cfg.hardware.precision if cfg.hardware.precision != "auto" else "bf16-mixed"
        batch = args.batch_size or (1 if seeded and not args.config else cfg.train.batch_size)
        if seeded or args.seq_len is not None:
            seq, cap = args.seq_len, False
        else:
            seq, cap = cfg.data.seq_len, True    # the config's length, capped at the model's context
        read_data = bool(args.config or args.cfg_dataset or getattr(args, "demo", False))
        plan_fn = _planner(args, read_data, cfg.hardware.precision == "auto") if args.model and args.trace else None
        report = estimate_report(args.model, params=args.params, hidden=args.hidden, layers=args.layers,
                                 seq_len=seq, cap_seq_len=cap, batch_size=batch, grad_accum=cfg.train.grad_accum,
                                 precision=precision, optimizer=cfg.optim.optimizer, loss=cfg.memory.loss,
                                 activation_checkpointing=cfg.memory.activation_checkpointing, gpus=args.gpus,
                                 gpu_memory_gb=card, run_config=cfg, plan_fn=plan_fn)
    except FTStudioError as e:
        return fail(str(e))
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(format_report(report))
    return 0


def _planner(args: argparse.Namespace, read_data: bool, auto_precision: bool = False):
    """The plan of the run `train` would start (train/plan_run.py): traced step, fast defaults, real rows, and the
    budget fit (with precision still "auto" where nobody chose one: the fit may choose pure bf16, as train's does)."""
    def plan(run, model_config: dict):
        from ftstudio.engine.train.plan_run import plan_run

        if auto_precision:
            run = run.replace(precision="auto")              # bf16-mixed on a GPU unless the budget fit chooses
        if args.gpu_memory and not run.hardware.gpu_memory:
            run = run.replace(gpu_memory=args.gpu_memory)     # train's budget fit (train/fastest.py), same flag
        rp = plan_run(run, model_config=model_config, gpus=args.gpus, device="cuda", read_data=read_data)
        return rp.plan, rp.lines
    return plan
