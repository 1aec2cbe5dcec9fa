"""LoadBar: the monitor's progress bar before a run's first step. While the model and data load it counts the
seconds; where the load can be counted (a GGUF's tensors de-quantised, LoadProgress events) it becomes a
determinate bar: tensors done of all, elapsed time and the ETA from the rate so far."""
from __future__ import annotations

from PySide6.QtWidgets import QProgressBar

from ftstudio.core import events as ev

from .engine_access import fmt_duration


class LoadBar:
    def __init__(self, bar: QProgressBar):
        self.bar = bar
        self.last: ev.LoadProgress | None = None

    def reset(self) -> None:
        self.last = None

    def eta_s(self) -> float | None:
        e = self.last
        if e is None or e.done <= 0 or e.elapsed_s <= 0:
            return None
        return e.elapsed_s / e.done * (e.total - e.done)

    def show(self, e: ev.LoadProgress) -> None:
        self.last = e
        self.bar.setRange(0, max(1, e.total))
        self.bar.setValue(min(e.done, e.total))
        eta = self.eta_s()
        self.bar.setFormat(f"starting: {e.what} %v / %m · elapsed {fmt_duration(e.elapsed_s)}"
                           + (f" · ETA {fmt_duration(eta)}" if eta is not None and e.done < e.total else ""))

    def waiting(self, waited_s: float) -> None:
        """Before the first event: the seconds of the load so far, unless a counted load holds the bar."""
        waited, e = int(waited_s), self.last
        if e is None:
            self.bar.setFormat(f"starting: loading the model and data… {waited} s" if waited else "starting…")
        elif e.done >= e.total:  # counted to the end; the rest of the load (onto the device) is seconds again
            self.bar.setFormat(f"starting: {e.what}: all {e.total} done in {fmt_duration(e.elapsed_s)} · "
                               f"loading… {waited} s")
