"""`ftstudio`: the GUI by default; `train`, `estimate`, `check-data`, `gpus` and `gui` verbs headless.

Every verb drives the same engine with the same RunConfig as the GUI. Errors that are the user's to fix
print as clean lines (no traceback) and exit non-zero.
"""
from __future__ import annotations

import argparse
import sys

from ftstudio import __version__

VERBS = ("train", "estimate", "check-data", "gpus", "launch-script", "gui")


def build_parser() -> argparse.ArgumentParser:
    from . import check_data, estimate, gpus, launch_script, train

    parser = argparse.ArgumentParser(prog="ftstudio", description="Full fine-tuning of pre-trained transformers. "
                                     "With no verb, opens the desktop app.")
    parser.add_argument("--version", action="version", version=f"ftstudio {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    train.add_parser(sub)
    estimate.add_parser(sub)
    check_data.add_parser(sub)
    gpus.add_parser(sub)
    launch_script.add_parser(sub)
    g = sub.add_parser("gui", help="open the desktop app (the default)", add_help=False)
    g.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # a frozen (PyInstaller) app re-enters main() in child processes
    _guard_windowed_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--self-test"]:
        from ftstudio.selftest import run_self_test
        return run_self_test(argv[1:])
    if not argv or argv[0] == "gui" or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        gui_args = argv[1:] if argv and argv[0] == "gui" else argv
        return _run_gui(gui_args)
    _default_sigpipe()
    args = build_parser().parse_args(argv)
    if getattr(args, "func", None) is None:
        return _run_gui(argv[1:])
    return int(args.func(args) or 0)


def _run_gui(argv: list[str]) -> int:
    try:
        from ftstudio.gui.app import main as gui_main
    except ImportError as e:
        print(f"ftstudio: the desktop app cannot start ({e}). The headless verbs work: "
              f"ftstudio train --demo, ftstudio estimate, ftstudio check-data, ftstudio gpus.", file=sys.stderr)
        return 2
    return int(gui_main(argv) or 0)


def _default_sigpipe() -> None:
    """`ftstudio check-data x | head` should end quietly when head closes the pipe, as Unix tools do."""
    import signal

    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _guard_windowed_streams() -> None:
    """A windowed (PyInstaller) app has no stdout/stderr: logging, tqdm and rich would crash writing to None."""
    import os

    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


def fail(message: str, code: int = 2) -> int:
    print(f"ftstudio: error: {message}", file=sys.stderr)
    return code
