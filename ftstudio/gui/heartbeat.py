"""Event-loop stall meter: a timer that should fire every ``interval_ms``; how late it fires is how long the
GUI thread was busy (or starved of the GIL). Goal during a run: p99 < 50 ms, max < 200 ms.
"""
from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer, Slot


class Heartbeat(QObject):
    def __init__(self, interval_ms: int = 20, parent: QObject | None = None):
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._beat)
        self._last: float | None = None
        self.stalls_ms: list[float] = []
        self.times: list[float] = []
        self.mark_t: float | None = None  # when training steps began (setup imports torch and loads the model)
        self.long_stalls: list[tuple[float, float]] = []  # (seconds since start, stall ms) over 100 ms
        self.t0 = 0.0
        self.probe = None  # a StallProbe when FTSTUDIO_STALL_DIAG=1 (see stall_probe.py)
        self.training_ids = None  # () -> (ident, native id) of the training thread, or None

    def start(self) -> None:
        self.stalls_ms.clear()
        self.times.clear()
        self.mark_t = None
        self.long_stalls.clear()
        self._last = self.t0 = time.perf_counter()
        from . import stall_probe
        if stall_probe.enabled():
            self.probe = stall_probe.StallProbe()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._last = None
        if self.probe is not None:
            self.probe.stop()

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    @Slot()
    def _beat(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            stall = max(0.0, (now - self._last) * 1000.0 - self.interval_ms)
            self.stalls_ms.append(stall)
            self.times.append(now)
            if stall > 100:
                self.long_stalls.append((round(now - self.t0, 2), round(stall, 1)))
        if self.probe is not None:
            if self.probe.train_tid is None and self.training_ids is not None and self.training_ids():
                self.probe.set_training_thread(*self.training_ids())
            self.probe.beat(now, stall if self._last is not None else 0.0)
        self._last = now

    def skip(self) -> None:
        """Forget the time since the last beat: for a stall we caused on purpose (a screenshot), not the run."""
        if self._last is not None:
            self._last = time.perf_counter()

    def mark(self) -> None:
        """Note the start of the training steps, so their stalls can be told from the setup's."""
        if self.mark_t is None:
            self.mark_t = time.perf_counter()

    def stats(self, since_mark: bool = False) -> dict[str, float]:
        """{"beats", "p50_ms", "p99_ms", "max_ms"} of the lateness of each beat (after ``mark()`` if asked)."""
        if since_mark:
            t = self.mark_t if self.mark_t is not None else float("inf")
            xs = sorted(s for s, tt in zip(self.stalls_ms, self.times) if tt >= t)
        else:
            xs = sorted(self.stalls_ms)
        if not xs:
            return {"beats": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}

        def pct(p: float) -> float:
            return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

        return {"beats": len(xs), "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1),
                "max_ms": round(xs[-1], 1)}

    def summary(self) -> str:
        a, b = self.stats(), self.stats(since_mark=True)
        return (f"event-loop stalls (heartbeat every {self.interval_ms} ms): whole run {a['beats']} beats, "
                f"p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, max {a['max_ms']} ms; training steps only "
                f"{b['beats']} beats, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, max {b['max_ms']} ms")
