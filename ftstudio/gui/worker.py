"""Threads for the GUI: the training run on a QThread, and short jobs (model description, data checks,
NVML polls, comparisons) on a QThreadPool.

The recipe (CONVENTIONS "Threads follow one recipe"): one worker QObject moved to a QThread; started → run,
finished → quit; stop through :class:`~ftstudio.core.control.Control`, never ``terminate()``; on close request
stop, quit and wait. Results come back as queued signals to ``@Slot`` methods of main-thread objects.

The trainer's events are not sent one signal each: the reporter appends them to a deque (appends are
thread-safe) and the monitor drains it on its ~10 Hz timer, so a fast run cannot flood the event loop.
"""
from __future__ import annotations

import collections
import os
import threading
import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThread, QThreadPool, Signal, Slot

from ftstudio.core.control import Control
from ftstudio.core.events import Event, RunFailed


TRAINING_NICE = 10


def lower_priority() -> None:
    """Lower this thread's CPU priority (Linux threads have their own nice value; the threads it starts, such
    as torch's intra-op pool and a torchrun subprocess, inherit it). On a machine with few cores, torch's
    threads otherwise keep the GUI thread waiting in the run queue: the event loop stalls while a step runs.
    Training loses nothing when the GUI is idle; the GUI thread gets a core the moment it needs one."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), TRAINING_NICE))
    except (AttributeError, OSError):  # not Linux/macOS, or not permitted: the run goes on at normal priority
        pass


class TrainingWorker(QObject):
    """Runs one ``engine.trainer.train(config, reporter, control)`` inside its QThread (one device in this
    process, or several GPUs through a supervised torchrun subprocess: the events look the same)."""

    finished = Signal(object)  # RunFinished | RunFailed

    def __init__(self, config, control: Control, events: collections.deque, resume_from: str | None = None):
        super().__init__()
        self.config = config
        self.control = control
        self.events = events
        self.resume_from = resume_from
        self.result = None  # also kept here: at close the queued finished signal cannot be delivered
        self.thread_ids: tuple[int, int] | None = None  # (Python ident, OS thread id), for the stall probe

    @Slot()
    def run(self) -> None:
        self.thread_ids = (threading.get_ident(), threading.get_native_id())
        lower_priority()
        try:
            from ftstudio.engine import run as train  # lazy: torch is imported here, on the worker thread

            result = train(self.config, self.events.append, self.control, resume_from=self.resume_from)
        except Exception as exc:  # the trainer reports user errors itself; this catches bugs and a missing engine
            result = RunFailed(reason=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__,
                               advice="This is a bug or a missing part of FT Studio, not a problem with your data.")
            self.events.append(result)
            traceback.print_exc()
        if result is None:
            result = RunFailed(reason="the trainer returned nothing", error_type="RuntimeError")
        self.result = result
        self.finished.emit(result)


class RunController(QObject):
    """Owns the training thread. One run at a time; the GUI thread never waits on it except at close."""

    started = Signal()
    done = Signal(object)  # RunFinished | RunFailed, after the thread has ended

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.events: collections.deque[Event] = collections.deque()
        self.control: Control | None = None
        self._thread: QThread | None = None
        self._worker: TrainingWorker | None = None
        self._result = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, config, resume_from: str | None = None) -> None:
        if self.running:
            raise RuntimeError("a run is already in progress")
        self.events.clear()
        self.control = Control()
        self._result = None
        self._thread = QThread()
        self._thread.setObjectName("ftstudio-training")
        self._worker = TrainingWorker(config, self.control, self.events, resume_from)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.finished.connect(self._thread.quit)
        self._worker.finished.connect(self._on_worker_finished)
        self._thread.finished.connect(self._on_thread_finished)
        self._thread.start()
        self.started.emit()

    # -- requests ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self.control is not None:
            self.control.request_stop()

    def pause(self) -> None:
        if self.control is not None:
            self.control.pause()

    def resume(self) -> None:
        if self.control is not None:
            self.control.resume()

    def request_save(self) -> None:
        if self.control is not None:
            self.control.request_save()

    def training_thread_ids(self) -> tuple[int, int] | None:
        return self._worker.thread_ids if self._worker is not None else None

    @property
    def paused(self) -> bool:
        return self.control is not None and self.control.paused

    def shutdown(self, save: bool = True) -> None:
        """Stop the run (saving a checkpoint first when asked) and wait for the thread: used at close."""
        if self._thread is None:
            return
        if save:
            self.request_save()
        self.request_stop()
        self._thread.quit()
        self._thread.wait()
        self._on_thread_finished()

    # -- slots (main thread) -----------------------------------------------------------------
    @Slot(object)
    def _on_worker_finished(self, result) -> None:
        self._result = result

    @Slot()
    def _on_thread_finished(self) -> None:
        if self._thread is None:
            return
        self._thread.wait()
        result = self._result or (self._worker.result if self._worker is not None else None)
        self._thread = None
        self._worker = None
        self.done.emit(result)


class _Job(QRunnable):
    def __init__(self, fn: Callable[[], Any], tag: Any, runner: "JobRunner"):
        super().__init__()
        self.fn, self.tag, self.runner = fn, tag, runner
        self.setAutoDelete(True)

    def run(self) -> None:
        try:
            result = self.fn()
        except BaseException as exc:  # every failure goes back to the GUI, never into the void
            self.runner.failed.emit(self.tag, exc)
        else:
            self.runner.done.emit(self.tag, result)


class JobRunner(QObject):
    """Runs callables on a thread pool; ``done(tag, result)`` / ``failed(tag, exc)`` arrive queued on the
    main thread (this object lives there), so connect them to ``@Slot`` methods.
    """

    done = Signal(object, object)
    failed = Signal(object, object)

    def __init__(self, pool: QThreadPool | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = pool or QThreadPool.globalInstance()

    def submit(self, tag: Any, fn: Callable[[], Any]) -> None:
        self.pool.start(_Job(fn, tag, self))
