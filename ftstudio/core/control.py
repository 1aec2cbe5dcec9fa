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


_QUIT_HOOKS: list = []   # what a second signal must end before this process exits (a run's torchrun group)


def on_quit_now(fn):
    """Register ``fn`` to run when a second signal quits the process at once (SignalStop); returns ``fn``."""
    _QUIT_HOOKS.append(fn)
    return fn


def forget_quit_hook(fn) -> None:
    if fn in _QUIT_HOOKS:
        _QUIT_HOOKS.remove(fn)


class SignalStop:
    """SIGINT (Ctrl-C), SIGTERM (SLURM preemption, ``docker stop``, ``kill``) and SIGHUP (a closed terminal) stop a
    run alike: the first asks ``control`` to stop after the step in progress (the trainer saves a checkpoint and
    writes ``stopped``); a second exits at once with status 128 + its number, keeping the newest complete
    checkpoint (every write is atomic, core/atomic.py). ``say`` prints a line; ``received`` is the first signal."""

    NAMES = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self, control: Control, say=None):
        self.control = control
        self.say = say or (lambda text: None)
        self.received: int | None = None

    def install(self) -> "SignalStop":
        import signal
        for name in self.NAMES:
            if hasattr(signal, name):
                try:
                    signal.signal(getattr(signal, name), self._handle)
                except ValueError:  # not the main thread: whoever owns it handles signals
                    return self
        return self

    def _handle(self, signum, frame) -> None:
        import os
        import signal
        name = signal.Signals(signum).name
        if self.received is not None:
            self._say(f"{name} again: quitting now (the newest complete checkpoint is kept)")
            for hook in list(_QUIT_HOOKS):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - quitting regardless
                    pass
            os._exit(128 + signum)
        self.received = signum
        self._say(f"{name}: stopping after this step (a checkpoint is saved); send it again to quit now")
        self.control.request_stop()

    def _say(self, text: str) -> None:
        try:
            self.say(text)
        except (OSError, ValueError):  # a closed terminal (SIGHUP) cannot take the line; the stop goes on
            pass

    @property
    def exit_code(self) -> int:
        """The conventional status of a run stopped by a signal (130 for Ctrl-C), 1 when stopped otherwise."""
        return 128 + self.received if self.received else 1
