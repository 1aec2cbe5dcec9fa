"""Why was the event loop late? A diagnostic for the heartbeat (``FTSTUDIO_STALL_DIAG=1``).

For each stall over ``threshold_ms`` it splits the GUI thread's lost time, from Linux's per-thread
``/proc/self/task/<tid>/schedstat`` (nanoseconds on a CPU, nanoseconds runnable but waiting for one):

* ``gui_cpu``   the GUI thread itself was running (our own redraw, layout, drain work);
* ``gui_queue`` the GUI thread was runnable but no core was free: CPU starvation (other processes, or
                torch's intra-op threads of our own run, which need no GIL);
* ``gui_sleep`` the rest: the GUI thread was asleep although its timer was due, i.e. blocked on a lock,
                in practice the GIL held by another Python thread;

with the training thread's CPU time over the same interval and the training thread's Python stack as a
helper thread last saw it during the stall (the helper needs the GIL too, so "no sample during the stall"
is itself a sign the GIL was held).
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
import traceback

ENV = "FTSTUDIO_STALL_DIAG"


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _schedstat(tid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting on a run queue) of one thread of this process; (0, 0) if unreadable."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as fh:
            on_cpu, queued, _slices = fh.read().split()
        return int(on_cpu), int(queued)
    except (OSError, ValueError):
        return 0, 0


class StallProbe:
    def __init__(self, threshold_ms: float = 100.0, sample_s: float = 0.005):
        self.threshold_ms = threshold_ms
        self.sample_s = sample_s
        self.gui_tid = threading.get_native_id()
        self.train_tid: int | None = None
        self.train_ident: int | None = None
        self.samples: collections.deque = collections.deque(maxlen=4000)  # (time, stack summary)
        self.reports: list[dict] = []
        self._prev: tuple[float, tuple[int, int], tuple[int, int]] | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def set_training_thread(self, ident: int, native_id: int) -> None:
        self.train_ident, self.train_tid = ident, native_id
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample, name="ftstudio-stall-sampler", daemon=True)
            self._sampler.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=1.0)
            self._sampler = None

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_s):
            frame = sys._current_frames().get(self.train_ident) if self.train_ident else None
            if frame is not None:
                stack = traceback.extract_stack(frame, limit=40)[-6:]
                self.samples.append((time.perf_counter(),
                                     " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                                                for f in reversed(stack))))

    def beat(self, now: float, stall_ms: float) -> None:
        """Called by the heartbeat on every beat (GUI thread)."""
        gui = _schedstat(self.gui_tid)
        train = _schedstat(self.train_tid) if self.train_tid else (0, 0)
        prev, self._prev = self._prev, (now, gui, train)
        if prev is None or stall_ms < self.threshold_ms:
            return
        t0, gui0, train0 = prev
        wall = (now - t0) * 1000
        gui_cpu = (gui[0] - gui0[0]) / 1e6
        gui_queue = (gui[1] - gui0[1]) / 1e6
        inside = [s for t, s in self.samples if t0 < t < now]
        after = [s for t, s in self.samples if t >= t0]
        self.reports.append({
            "at_s": round(now, 2), "stall_ms": round(stall_ms, 1), "wall_ms": round(wall, 1),
            "gui_cpu_ms": round(gui_cpu, 1), "gui_queue_ms": round(gui_queue, 1),
            "gui_sleep_ms": round(max(0.0, wall - gui_cpu - gui_queue), 1),
            "train_cpu_ms": round((train[0] - train0[0]) / 1e6, 1),
            "train_queue_ms": round((train[1] - train0[1]) / 1e6, 1),
            "samples_inside": len(inside),
            "train_stack": (inside or after or ["(no sample)"])[0],
            "loadavg_1m": round(os.getloadavg()[0], 2),
        })

    def verdict(self, r: dict) -> str:
        if r["gui_queue_ms"] > 0.5 * r["stall_ms"]:
            return "CPU starvation (GUI thread runnable, no core free)"
        if r["gui_cpu_ms"] > 0.5 * r["stall_ms"]:
            return "GUI thread busy with its own work"
        if r["gui_sleep_ms"] > 0.5 * r["stall_ms"]:
            return "GIL held by another thread (GUI thread asleep while due)"
        return "mixed"

    def summary(self) -> str:
        if not self.reports:
            return "stall probe: no stall over %.0f ms" % self.threshold_ms
        lines = [f"stall probe: {len(self.reports)} stall(s) over {self.threshold_ms:.0f} ms"]
        for r in self.reports:
            lines.append(f"  {r['stall_ms']} ms: {self.verdict(r)}; GUI cpu {r['gui_cpu_ms']} / run-queue "
                         f"{r['gui_queue_ms']} / asleep {r['gui_sleep_ms']} ms; training thread cpu "
                         f"{r['train_cpu_ms']} ms, queued {r['train_queue_ms']} ms; sampler saw "
                         f"{r['samples_inside']} samples inside; load {r['loadavg_1m']}; training at: "
                         f"{r['train_stack']}")
        return "\n".join(lines)


def timed_application_class():
    """A QApplication whose notify() times every event delivery and keeps the slow ones (diagnosis only:
    routing every event through Python costs a little)."""
    from PySide6.QtWidgets import QApplication

    class TimedApplication(QApplication):
        slow: list[tuple[float, str]] = []
        depth = 0

        def notify(self, receiver, event):  # noqa: N802 (Qt name)
            t0 = time.perf_counter()
            TimedApplication.depth += 1
            try:
                return super().notify(receiver, event)
            finally:
                TimedApplication.depth -= 1
                ms = (time.perf_counter() - t0) * 1000
                if ms > 25:
                    name = receiver.objectName() if hasattr(receiver, "objectName") else ""
                    TimedApplication.slow.append(
                        (round(ms, 1), f"{'  ' * TimedApplication.depth}{type(receiver).__name__}"
                                       f"({name}) {event.type().name}"))

    return TimedApplication
