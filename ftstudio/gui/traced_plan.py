"""The traced memory plan off the GUI thread: the bar shows the closed form at once (plan.estimate, microseconds),
then the plan ``ftstudio estimate`` prints for the same run (train/plan_run.py: the model's own step traced on
fake tensors, the fast defaults' choices, the data's real rows), computed in a worker thread.

Requests coalesce: a trace starts once the form has been still for ``DELAY_MS``; while one runs, only the newest
request waits; a result is applied only if no newer request was made since (the user kept editing). The data's
rows are read again only when the data or the settings that shape the rows change (plan_run.kept_rows).
"""
from __future__ import annotations

import threading

from PySide6.QtCore import QObject, QTimer, Signal, Slot


class TracedPlanner(QObject):
    planned = Signal(int, object)      # (request number, train.plan_run.RunPlan)
    failed = Signal(int, str)          # (request number, one line: why the traced plan is not shown)

    DELAY_MS = 300

    def __init__(self, parent: QObject | None = None, delay_ms: int | None = None):
        super().__init__(parent)
        self.generation = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.DELAY_MS if delay_ms is None else delay_ms)
        self._timer.timeout.connect(self._start)
        self._job = None
        self._lock = threading.Lock()
        self._pending = None
        self._busy = False
        self.thread: threading.Thread | None = None

    def request(self, model_config: dict, cfg, gpus: int, device: str | None) -> int:
        """Plan ``cfg`` for ``device`` ("cpu", or None: a CUDA card); returns the request's number."""
        self.generation += 1
        self._job = (self.generation, dict(model_config), cfg, gpus, device or "cuda:0")
        self._timer.start()
        return self.generation

    @Slot()
    def _start(self) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        with self._lock:
            if self._busy:
                self._pending = job
                return
            self._busy = True
        self.thread = threading.Thread(target=self._work, args=(job,), name="traced-plan", daemon=True)
        self.thread.start()

    def stop(self, wait_s: float = 30.0) -> None:
        """No more traces: the waiting ones dropped, a running one's result ignored and waited for."""
        self._timer.stop()
        self._job = None
        self.generation += 1
        with self._lock:
            self._pending = None
        if self.thread is not None:
            self.thread.join(wait_s)

    def is_current(self, generation: int) -> bool:
        return generation == self.generation

    def _work(self, job) -> None:
        while job is not None:
            gen, model_config, cfg, gpus, device = job
            try:
                from ftstudio.engine.train.plan_run import plan_run
                rp = plan_run(cfg, model_config=model_config, gpus=gpus, device=device)
                _emit(self.planned, gen, rp)
            except Exception as e:  # noqa: BLE001 - the closed form stays on the bar, and the reason is said
                first = (str(e).strip().splitlines() or [""])[0][:200]
                _emit(self.failed, gen, f"{type(e).__name__}: {first}")
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._busy = False


def _emit(signal, *args) -> None:
    try:
        signal.emit(*args)
    except RuntimeError:          # the window closed while the trace ran: nobody to tell
        pass


def attach(window) -> TracedPlanner:
    """A planner for ``window`` (main_window.MainWindow): its traced plan replaces the closed form on the memory
    bar, unless the user changed the form since it was asked for."""
    planner = TracedPlanner(window)

    def planned(gen: int, rp) -> None:
        if planner.is_current(gen):
            window.plan = rp.plan
            window.memory_bar.set_traced(rp.plan, describe(rp))
            window.planUpdated.emit(rp.plan)

    def failed(gen: int, why: str) -> None:
        if planner.is_current(gen):
            window.memory_bar.set_how(f"closed form: the traced plan failed ({why})")
    planner.planned.connect(planned)
    planner.failed.connect(failed)
    return planner


def describe(rp) -> str:
    """One line for the bar: how the plan was made, its margin, and the choices it planned."""
    plan = rp.plan
    head = f"{plan.method} plan, margin ±{plan.margin:.0%}" if plan.margin else f"{plan.method} plan"
    said = "; ".join(rp.lines[:3])
    return head + (f" ({said})" if said else "")


__all__ = ["TracedPlanner", "attach", "describe"]
