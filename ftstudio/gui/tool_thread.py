"""A long engine job other than the main run (the LR range test, a sweep) on its own QThread, by the recipe of
``worker.py``: one worker QObject moved to a QThread, started → run, finished → quit; stop through a
``Control``; on close request stop, quit and wait. The job's events go to a deque that the dialog drains on
its own ~10 Hz timer; its result (or its one-line error) arrives as a queued signal.
"""
from __future__ import annotations

import collections
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot
from PySide6.QtWidgets import QPushButton

from ftstudio.core.control import Control

from .worker import lower_priority


class _ToolWorker(QObject):
    finished = Signal(object, str)  # (result or None, error message or "")

    def __init__(self, job: Callable[[Callable, Control], Any], events: collections.deque, control: Control):
        super().__init__()
        self.job, self.events, self.control = job, events, control

    @Slot()
    def run(self) -> None:
        lower_priority()
        try:
            result, error = self.job(self.events.append, self.control), ""
        except Exception as exc:  # noqa: BLE001 - a user error (ConfigError…) or a bug: one line in the dialog
            from ftstudio.core.errors import FTStudioError
            if not isinstance(exc, FTStudioError):
                traceback.print_exc()
            result, error = None, str(exc) if isinstance(exc, FTStudioError) else f"{type(exc).__name__}: {exc}"
        self.finished.emit(result, error)


class ToolThread(QObject):
    """Owns one job's thread. ``done(result, error)`` arrives on the main thread after the thread ended."""

    done = Signal(object, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.events: collections.deque = collections.deque()
        self.control: Control | None = None
        self._thread: QThread | None = None
        self._worker: _ToolWorker | None = None
        self._outcome: tuple[Any, str] = (None, "")

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, job: Callable[[Callable, Control], Any]) -> None:
        if self.running:
            raise RuntimeError("a job is already running")
        self.events.clear()
        self.control = Control()
        self._outcome = (None, "")
        self._thread = QThread()
        self._thread.setObjectName("ftstudio-tool")
        self._worker = _ToolWorker(job, self.events, self.control)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.finished.connect(self._thread.quit)
        self._worker.finished.connect(self._on_worker_finished)
        self._thread.finished.connect(self._on_thread_finished)
        self._thread.start()

    def request_stop(self) -> None:
        if self.control is not None:
            self.control.request_stop()

    def shutdown(self) -> None:
        """Stop the job and wait for its thread (dialog closed mid-run)."""
        if self._thread is None:
            return
        self.request_stop()
        self._thread.quit()
        self._thread.wait()
        self._on_thread_finished()

    @Slot(object, str)
    def _on_worker_finished(self, result, error: str) -> None:
        self._outcome = (result, error)

    @Slot()
    def _on_thread_finished(self) -> None:
        if self._thread is None:
            return
        self._thread.wait()
        self._thread = None
        self._worker = None
        self.done.emit(*self._outcome)


def job_controls(dialog, row, use_text: str, redraw_ms: int = 100) -> None:
    """The controls both tool dialogs share, added to ``row``: Start / Stop / <use_text> / Close wired to the
    dialog's ``start``, ``stop``, ``_use`` and ``close``, its ``job`` (a :class:`ToolThread` whose ``done`` goes to
    ``_done``) and its ``timer`` draining the job's events into ``_drain`` at about 10 Hz."""
    dialog.start_button = QPushButton("Start")
    dialog.stop_button = QPushButton("Stop")
    dialog.use_button = QPushButton(use_text)
    close = QPushButton("Close")
    for b in (dialog.start_button, dialog.stop_button, dialog.use_button, close):
        row.addWidget(b)
    dialog.stop_button.setEnabled(False)
    dialog.use_button.setEnabled(False)
    dialog.start_button.clicked.connect(dialog.start)
    dialog.stop_button.clicked.connect(dialog.stop)
    dialog.use_button.clicked.connect(dialog._use)
    close.clicked.connect(dialog.close)
    dialog.job = ToolThread(dialog)
    dialog.job.done.connect(dialog._done)
    dialog.timer = QTimer(dialog)
    dialog.timer.setInterval(redraw_ms)
    dialog.timer.timeout.connect(dialog._drain)


def run_stop(view, row, run_text: str, on_run, names: tuple[str, str], redraw_ms: int = 100) -> None:
    """Run / Stop of a view that runs one engine job at a time, added to ``row``: ``view.run_button`` (``on_run``),
    ``view.stop_button`` (``view.stop``; enabled while the job runs), ``view.job`` (a :class:`ToolThread` whose
    ``done`` goes to ``view._done``) and ``view.timer`` draining the job's events into ``view._drain``; ``names``
    are the two buttons' object names."""
    view.run_button = QPushButton(run_text)
    view.stop_button = QPushButton("Stop")
    for button, name in zip((view.run_button, view.stop_button), names):
        button.setObjectName(name)
        row.addWidget(button)
    view.stop_button.setEnabled(False)
    view.run_button.clicked.connect(on_run)
    view.stop_button.clicked.connect(view.stop)
    view.job = ToolThread(view)
    view.job.done.connect(view._done)
    view.timer = QTimer(view)
    view.timer.setInterval(redraw_ms)
    view.timer.timeout.connect(view._drain)

