"""The headless verbs of `ftstudio`: `train`, `estimate`, `check-data`, `gpus`, `launch-script` (`gui` is listed
here for --help; ftstudio/entry.py opens the window).

Every verb drives the same engine with the same RunConfig as the GUI. Errors that are the user's to fix
print as clean lines (no traceback) and exit non-zero.
"""
from __future__ import annotations

import argparse
import sys

from ftstudio import __version__
from ftstudio.core.streams import guard_windowed_streams

VERBS = ("train", "estimate", "check-data", "gpus", "launch-script", "export", "lr-find", "sweep", "gui")


def build_parser() -> argparse.ArgumentParser:
    from . import check_data, estimate, export, gpus, launch_script, lr_find, sweep, train

    parser = argparse.ArgumentParser(prog="ftstudio", description="Full fine-tuning of pre-trained transformers. "
                                     "With no verb, opens the desktop app.")
    parser.add_argument("--version", action="version", version=f"ftstudio {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    train.add_parser(sub)
    estimate.add_parser(sub)
    check_data.add_parser(sub)
    gpus.add_parser(sub)
    launch_script.add_parser(sub)
    lr_find.add_parser(sub)
    sweep.add_parser(sub)
    export.add_parser(sub)
    g = sub.add_parser("gui", help="open the desktop app (the default)", add_help=False)
    g.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The headless verbs (``ftstudio train …``); the ``ftstudio`` command (ftstudio/entry.py) sends the app's
    own arguments to the GUI and everything else here."""
    guard_windowed_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    _default_sigpipe()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    return int(args.func(args) or 0)


def _default_sigpipe() -> None:
    """`ftstudio check-data x | head` should end quietly when head closes the pipe, as Unix tools do."""
    import signal

    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def fail(message: str, code: int = 2) -> int:
    print(f"ftstudio: error: {message}", file=sys.stderr)
    return code
