"""The headless verbs of `ftstudio`: `train`, `estimate`, `check-data`, `gpus`, `launch-script` (`gui` is listed
here for --help; ftstudio/entry.py opens the window).

Every verb drives the same engine with the same RunConfig as the GUI. Errors that are the user's to fix
print as clean lines (no traceback) and exit non-zero: a bad flag is one line (not argparse's usage block), a
user error raised anywhere in a verb is one line, and a bug is one line that says how to see its traceback
(FTSTUDIO_DEBUG=1).
"""
from __future__ import annotations

import argparse
import os
import sys

from ftstudio import __version__
from ftstudio.core.streams import guard_windowed_streams

VERBS = ("train", "estimate", "check-data", "gpus", "launch-script", "export", "lr-find", "sweep", "eval",
         "interpolate", "gui")


def build_parser() -> argparse.ArgumentParser:
    from . import check_data, estimate, eval as eval_cmd, export, gpus, interpolate, launch_script, lr_find, sweep, train

    parser = OneLineParser(prog="ftstudio", description="Full fine-tuning of pre-trained transformers. "
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
    eval_cmd.add_parser(sub)
    interpolate.add_parser(sub)
    g = sub.add_parser("gui", help="open the desktop app (the default)", add_help=False)
    g.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The headless verbs (``ftstudio train …``); the ``ftstudio`` command (ftstudio/entry.py) sends the app's
    own arguments to the GUI and everything else here."""
    guard_windowed_streams()
    for stream in (sys.stdout, sys.stderr):  # text that cannot be encoded (a lone surrogate) prints as an escape
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    argv = list(sys.argv[1:] if argv is None else argv)
    _default_sigpipe()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    from ftstudio.core.errors import FTStudioError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # a full disk under a redirected stdout surfaces here, not as a bare exit status 120
        return code
    except FTStudioError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - a bug: one line, and the way to see where it happened
        from ftstudio.core.atomic import is_disk_full
        if is_disk_full(e):   # stdout redirected to a full disk, or a write no verb caught: the user's to fix
            return _disk_full(e)
        if os.environ.get("FTSTUDIO_DEBUG"):
            raise
        return fail(f"internal error ({type(e).__name__}: {e}); this is a bug in FT Studio: run again with "
                    "FTSTUDIO_DEBUG=1 for the traceback and report it", 70)


def _disk_full(e: BaseException) -> int:
    from ftstudio.core.atomic import disk_full_message
    where = getattr(e, "filename", None) or _stream_path(sys.stdout) or "the output"
    try:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - what stdout still buffers cannot be written: said below
    except OSError:
        pass
    return fail(f"could not write: {disk_full_message(where)}; free some space (a run continues with "
                "ftstudio train --resume RUN)", 1)


def _stream_path(stream) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (OSError, ValueError, AttributeError):
        return ""


class OneLineParser(argparse.ArgumentParser):
    """argparse, except that a bad command line is one line naming the verb and the problem (not the usage block,
    which for `train` is a screen of flags)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _default_sigpipe() -> None:
    """`ftstudio check-data x | head` should end quietly when head closes the pipe, as Unix tools do."""
    import signal

    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def fail(message: str, code: int = 2) -> int:
    print(f"ftstudio: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code
