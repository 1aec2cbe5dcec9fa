"""`ftstudio sweep CONFIG --lr 1e-6:1e-4 --trials N --max-steps S`: an Optuna sweep of short real runs."""
from __future__ import annotations

import argparse
import json

from .flags import add_config_flags


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LOW:HIGH, e.g. 1e-6:1e-4") from None
    return lo, hi


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers such as 8,16,32") from None


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="search the learning rate (Optuna): short real runs, pruned by a median rule",
                       description="Each trial is a real short run in its own folder under --output, with the LR "
                                   "drawn log-uniformly from --lr (and optionally the batch size and warmup); a "
                                   "median pruner stops trials whose evaluation is worse than the median of "
                                   "earlier trials at that step. Writes results.md/.csv, sweep.png and best.yaml "
                                   "(your config with the best values: `ftstudio train best.yaml`). Needs "
                                   "pip install 'ftstudio[sweep]'.")
    p.add_argument("config", nargs="?", help="a run config YAML (the same as `ftstudio train` reads)")
    p.add_argument("--demo", action="store_true", help="the bundled demo: all-MiniLM-L6-v2 on legal clauses")
    p.add_argument("--preset", metavar="NAME", help="apply a named preset before the flags")
    p.add_argument("--trials", type=int, default=8, help="how many trials (default 8)")
    p.add_argument("--batch-sizes", type=_ints, metavar="8,16", help="also draw the batch size from this list")
    p.add_argument("--warmup", type=_range, metavar="0:0.1", help="also draw the warmup ratio from this range")
    p.add_argument("--json", action="store_true", help="print {best_lr, best_config, trials} as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(p)
    # The config's own --lr and --max-steps mean the sweep's range and each trial's length here.
    for action in p._actions:
        if action.dest == "cfg_lr":
            action.type, action.metavar = _range, "LOW:HIGH"
            action.help = "the LR range, drawn log-uniformly (default 1e-6:1e-4)"
        elif action.dest == "cfg_max_steps":
            action.help = "optimizer steps of each trial (default 50)"
    p.set_defaults(func=run, resume=None)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.control import Control
    from ftstudio.core.errors import FTStudioError

    from . import fail
    from .console import ConsoleSink
    from .train import _install_sigint, load_config

    lr_range = args.cfg_lr or (1e-6, 1e-4)
    steps = args.cfg_max_steps or 50
    args.cfg_lr = args.cfg_max_steps = None   # the sweep's, not the config's
    try:
        cfg = load_config(args)
        from ftstudio.engine.sweep import SweepSpec, sweep

        spec = SweepSpec(lr_low=lr_range[0], lr_high=lr_range[1], trials=args.trials, max_steps=steps,
                         batch_sizes=args.batch_sizes or [], warmup=args.warmup)
        spec.check()
    except FTStudioError as e:
        return fail(str(e))
    control = Control()
    _install_sigint(control)
    sink = ConsoleSink(quiet=args.quiet)
    try:
        result = sweep(cfg, spec, sink, control)
    except FTStudioError as e:
        return fail(str(e))
    finally:
        sink.close()
    c = sink.console
    from ftstudio.engine.sweep import results_table
    c.print(results_table(result), markup=False)
    if result.best:
        c.print(f"Best: trial {result.best['number']}, lr {result.best['lr']:.2e}, eval {result.metric} "
                f"{result.best['value']:.4f}. Run it: ftstudio train {result.best_config}", markup=False)
        if result.caveat:
            c.print(f"But: {result.caveat}.", style="yellow", markup=False)
    else:
        c.print("No trial completed: no best.yaml", style="yellow")
    c.print(f"Table {result.table}; plot {result.plot or '-'}", markup=False)
    if args.json:
        print(json.dumps(result.summary(), default=str))
    return 0 if result.best else 1
