"""A windowed app (PyInstaller's windowed bundle, pythonw, a desktop launcher) has no stdout/stderr: logging, tqdm
and rich would crash writing to None. Both the CLI and the GUI entry call :func:`guard_windowed_streams` first."""
from __future__ import annotations

import os
import sys


def guard_windowed_streams() -> None:
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")
