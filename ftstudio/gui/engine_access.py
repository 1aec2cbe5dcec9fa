"""Reaching the engine from the GUI without importing torch at start-up.

Engine modules are imported only when a feature needs them; a module that is missing (or lacks a name the
contract promises) gives a clear "not available" message instead of a crash, so the window always opens.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class EngineMissing(RuntimeError):
    """An engine module or function this feature needs is not installed."""


def engine(module: str, *names: str) -> ModuleType:
    """``ftstudio.engine.<module>``, checked to offer ``names``; raises :class:`EngineMissing` otherwise."""
    try:
        mod = importlib.import_module(f"ftstudio.engine.{module}")
    except ImportError as exc:
        raise EngineMissing(f"ftstudio.engine.{module} is not available yet ({exc})") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise EngineMissing(f"ftstudio.engine.{module} does not offer {', '.join(missing)} yet")
    return mod


def available(module: str, *names: str) -> bool:
    try:
        engine(module, *names)
    except EngineMissing:
        return False
    return True


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}" if abs(n) < 10 * scale else f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def fmt_duration(s: float | None) -> str:
    if s is None or s != s or s < 0:
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
