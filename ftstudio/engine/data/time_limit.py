"""A time limit on pure-Python work that cannot be interrupted otherwise: a chat template (Jinja, compiled to
Python) whose nested loops would render one row for hours. Works in any thread (the GUI's worker included),
where ``signal.alarm`` would not: one watchdog thread raises :class:`TimeLimitExceeded` inside the thread
that armed it, through ``PyThreadState_SetAsyncExc``, which Python delivers at its next bytecode.

    with time_limit(10, "rendering the chat template"):
        text = tokenizer.apply_chat_template(...)

Arming and disarming are two attribute writes under a lock (cheap per row); the watchdog checks twice a
second. ``FTSTUDIO_TEMPLATE_TIME_LIMIT`` (seconds) overrides the chat template's default of 10 s.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from contextlib import contextmanager

TEMPLATE_SECONDS = 10.0


class TimeLimitExceeded(Exception):
    """Raised inside the guarded work when it ran past its limit."""

    def __init__(self, *args):
        super().__init__(*(args or ("ran past its time limit",)))   # raised by class, with no message, at first


def template_seconds() -> float:
    try:
        return float(os.environ.get("FTSTUDIO_TEMPLATE_TIME_LIMIT", TEMPLATE_SECONDS))
    except ValueError:
        return TEMPLATE_SECONDS


class _Watchdog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.armed: dict[int, tuple[float, float, str]] = {}   # thread id → (deadline, seconds, what)
        self.thread: threading.Thread | None = None

    def arm(self, seconds: float, what: str) -> int:
        tid = threading.get_ident()
        with self.lock:
            self.armed[tid] = (time.monotonic() + seconds, seconds, what)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._watch, name="ftstudio-time-limit", daemon=True)
                self.thread.start()
        return tid

    def disarm(self, tid: int) -> None:
        with self.lock:
            self.armed.pop(tid, None)

    def _watch(self) -> None:
        while True:
            time.sleep(min(0.5, max(0.05, min((s for _, s, _ in self.armed.values()), default=0.5) / 4)))
            now = time.monotonic()
            with self.lock:
                for tid, (deadline, seconds, what) in list(self.armed.items()):
                    if now > deadline:
                        del self.armed[tid]   # once: the exception is on its way
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                                   ctypes.py_object(TimeLimitExceeded))


_WATCHDOG = _Watchdog()


@contextmanager
def time_limit(seconds: float, what: str):
    """Run the block with a limit; :class:`TimeLimitExceeded` (its message says what and how long) past it."""
    if seconds <= 0:
        yield
        return
    tid = _WATCHDOG.arm(seconds, what)
    try:
        yield
    except TimeLimitExceeded:
        raise TimeLimitExceeded(f"{what} took longer than {seconds:g} s") from None
    finally:
        _WATCHDOG.disarm(tid)
