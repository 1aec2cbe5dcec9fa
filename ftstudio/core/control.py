"""The run's remote control: stop, pause and save-now requests, polled by the trainer between steps.

Thread-safe and Qt-free, so the GUI worker, a signal handler or a test can drive it.
"""
from __future__ import annotations

import threading


class Control:
    """Requests to a running trainer. The trainer polls it between optimizer steps."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._save = threading.Event()

    # -- requests (any thread) -------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._resume.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    def request_save(self) -> None:
        self._save.set()

    # -- queries (trainer thread) ----------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._resume.is_set()

    def take_save_request(self) -> bool:
        """True once per save-now request."""
        if self._save.is_set():
            self._save.clear()
            return True
        return False

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        """Block while paused; returns at once when not paused or when stop is requested."""
        while not self._resume.wait(poll_s):
            if self._stop.is_set():
                return
