"""`ftstudio lr-find [CONFIG.yaml] [flags]`: the learning-rate range test, a plot and a suggested LR."""
from __future__ import annotations

import argparse
import json

from .flags import add_config_flags


def add_parser(sub) -> None:
    p = sub.add_parser("lr-find", help="find a learning rate: the LR range test (a plot and a suggestion)",
                       description="Train from the pre-trained weights while the LR grows exponentially from "
                                   "--start-lr to --end-lr, stop when the loss diverges, and suggest an LR: a "
                                   "tenth of the LR at the smoothed loss's minimum, clipped to the fine-tuning "
                                   "range. Writes lr_find.png and lr_find.json in its own run folder; the "
                                   "model's files are never written.")
    p.add_argument("config", nargs="?", help="a run config YAML (the same as `ftstudio train` reads)")
    p.add_argument("--demo", action="store_true", help="the bundled demo: all-MiniLM-L6-v2 on legal clauses")
    p.add_argument("--preset", metavar="NAME", help="apply a named preset before the flags")
    p.add_argument("--steps", type=int, default=100, help="steps of the test at most (default 100)")
    p.add_argument("--start-lr", type=float, default=1e-7, help="the first step's LR (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=1e-2, help="the last step's LR (default 1e-2)")
    p.add_argument("--json", action="store_true", help="print {suggested_lr, plot, steps, ...} as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(p)
    p.set_defaults(func=run, resume=None)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.control import Control
    from ftstudio.core.errors import FTStudioError

    from . import fail
    from .console import ConsoleSink
    from .train import _install_sigint, load_config

    if args.steps < 2:
        return fail(f"--steps {args.steps}: the range test needs at least 2 steps")
    try:
        cfg = load_config(args)
    except FTStudioError as e:
        return fail(str(e))
    control = Control()
    _install_sigint(control)
    sink = ConsoleSink(quiet=args.quiet)
    from ftstudio.engine.train.lr_find import lr_find

    try:
        result = lr_find(cfg, sink, control, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    except FTStudioError as e:
        sink.close()
        return fail(str(e))
    finally:
        sink.close()
    c = sink.console
    if result.status == "failed":
        c.print(f"ftstudio: error: the range test failed: {result.reason}", style="bold red", markup=False)
    elif result.suggested_lr is None:
        c.print(f"No suggestion: {result.reason}", style="yellow", markup=False)
    else:
        c.print(f"Suggested learning rate: [bold]{result.suggested_lr:.2e}[/] ({result.rule}; the smoothed loss "
                f"was lowest at {result.min_loss_lr:.2e}"
                + (f", steepest at {result.steepest_lr:.2e}" if result.steepest_lr else "") + ")")
        c.print(f"Range test: {result.steps} steps, {result.status}. Plot: {result.plot or '-'}. "
                f"Train with it: ftstudio train … --lr {result.suggested_lr:.2e}", markup=False)
    if args.json:
        print(json.dumps(result.summary(), default=str))
    return 0 if result.status != "failed" and result.suggested_lr is not None else 1
