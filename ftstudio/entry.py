"""The `ftstudio` command: the desktop app by default (and for `ftstudio gui …`), the bundle's `--self-test`, and
the headless verbs of ftstudio/cli otherwise. It sits above both front ends, so that neither imports the other."""
from __future__ import annotations

import sys

from ftstudio.core.streams import guard_windowed_streams


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    multiprocessing.freeze_support()  # a frozen (PyInstaller) app re-enters main() in child processes
    guard_windowed_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--self-test"]:
        from ftstudio.selftest import run_self_test
        return run_self_test(argv[1:])
    if not argv or argv[0] == "gui" or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return _run_gui(argv[1:] if argv and argv[0] == "gui" else argv)
    from ftstudio.cli import main as cli_main
    return cli_main(argv)


def _run_gui(argv: list[str]) -> int:
    try:
        from ftstudio.gui.app import main as gui_main
    except ImportError as e:
        print(f"ftstudio: the desktop app cannot start ({e}). The headless verbs work: "
              f"ftstudio train --demo, ftstudio estimate, ftstudio check-data, ftstudio gpus.", file=sys.stderr)
        return 2
    return int(gui_main(argv) or 0)
