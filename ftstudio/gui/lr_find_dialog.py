"""Run → Find learning rate: the LR range test of the current config, its curve drawn live, the suggestion with
its rule, and a button that puts the suggestion into the Training tab's learning-rate field."""
from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QSpinBox, QVBoxLayout

from ftstudio.core import events as ev

from .tool_thread import job_controls

REDRAW_MS = 100


def decade_labels(values) -> list[str]:
    """Tick labels of a log10 axis: "1e-05" at whole decades, none between them (pyqtgraph labels the minor
    ticks 2…9 too, which overprint each other on a range of five decades)."""
    return [f"{10 ** round(v):.0e}" if abs(v - round(v)) < 1e-6 else "" for v in values]


def _decade_axis():
    import pyqtgraph as pg

    class _DecadeAxis(pg.AxisItem):
        def logTickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph name)
            return decade_labels(values)

    return _DecadeAxis


def DecadeAxis(orientation: str):  # noqa: N802 (reads as the axis class it builds; pyqtgraph is imported late)
    return _decade_axis()(orientation)


class LRFindDialog(QDialog):
    """``config`` is the run config the test starts from; ``useLearningRate(float)`` when the user takes it."""

    useLearningRate = Signal(float)
    finishedTest = Signal(object)  # the LRFindResult, or None on an error (tests wait on it)

    def __init__(self, config, parent=None):
        super().__init__(parent)
        import pyqtgraph as pg

        from .engine_access import engine
        self.lr_mod = engine("train.lr_find", "lr_find", "lr_at", "smooth", "RULE")
        self.config = config
        self.result = None
        self.losses: list[float] = []
        self.setWindowTitle("Find learning rate")
        self.setObjectName("lrFindDialog")
        self.resize(720, 520)
        lay = QVBoxLayout(self)
        intro = QLabel("The LR range test trains from the pre-trained weights while the learning rate grows from "
                       "1e-7 to 1e-2, and stops when the loss diverges. Nothing is saved to your model. Suggestion: "
                       f"{self.lr_mod.RULE}.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        self.plot = pg.PlotWidget(axisItems={"bottom": DecadeAxis("bottom")})
        self.plot.setObjectName("lrFindPlot")
        self.plot.setLogMode(x=True, y=False)
        for side in ("bottom", "left"):  # the ticks carry the values: no "(x0.001)" scale beside the label
            self.plot.getPlotItem().getAxis(side).enableAutoSIPrefix(False)
        self.plot.setLabel("bottom", "learning rate")
        self.plot.setLabel("left", "training loss")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.raw_curve = self.plot.plot([], [], pen=pg.mkPen("#9ca3af", width=1))
        self.smooth_curve = self.plot.plot([], [], pen=pg.mkPen("#2563eb", width=2))
        self.marker = pg.InfiniteLine(angle=90, pen=pg.mkPen("#16a34a", width=2))
        self.marker.hide()
        self.plot.addItem(self.marker)
        lay.addWidget(self.plot, 1)
        self.status = QLabel("Press Start.")
        self.status.setObjectName("lrFindStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        row.addWidget(QLabel("Steps at most:"))
        self.steps = QSpinBox()
        self.steps.setRange(10, 1000)
        self.steps.setValue(100)
        row.addWidget(self.steps)
        row.addStretch(1)
        job_controls(self, row, "Use this learning rate", REDRAW_MS)
        self.use_button.setObjectName("useLrButton")
        lay.addLayout(row)

    @Slot()
    def start(self) -> None:
        if self.job.running:
            return
        self.losses.clear()
        self.result = None
        self.use_button.setEnabled(False)
        self.marker.hide()
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("Checking the memory plan and loading the model…")
        cfg, steps, find = self.config, self.steps.value(), self.lr_mod.lr_find
        self.job.start(lambda report, control: find(cfg, report, control, steps=steps))
        self.timer.start()

    @Slot()
    def stop(self) -> None:
        self.job.request_stop()
        self.status.setText("Stopping after this step…")

    @Slot()
    def _drain(self) -> None:
        grew = False
        while self.job.events:
            e = self.job.events.popleft()
            if isinstance(e, ev.StepMetrics):
                self.losses.append(e.loss)
                grew = True
            elif isinstance(e, ev.LogLine) and e.level != "info":
                self.status.setText(e.message)
            elif isinstance(e, ev.RunFailed):
                self.status.setText(f"Failed: {e.reason}")
        if grew:
            steps = self.steps.value()
            lrs = [self.lr_mod.lr_at(i, steps) for i in range(len(self.losses))]
            self._draw(lrs, self.losses, self.lr_mod.smooth(self.losses))
            self.status.setText(f"Step {len(self.losses)}: LR {lrs[-1]:.2e}, loss {self.losses[-1]:.4f}")

    def _draw(self, lrs, losses, smoothed) -> None:
        pts = [(x, a, b) for x, a, b in zip(lrs, losses, smoothed) if a == a and b == b and abs(b) != float("inf")]
        if pts:
            xs, raw, sm = (list(t) for t in zip(*pts))
            self.raw_curve.setData(xs, raw)
            self.smooth_curve.setData(xs, sm)

    @Slot(object, str)
    def _done(self, result, error: str) -> None:
        self._drain()
        self.timer.stop()
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.result = result
        if error or result is None:
            self.status.setText(f"The range test could not run: {error}")
        else:
            self._draw(result.lrs, result.losses, result.smoothed)
            if result.suggested_lr is not None:
                import math
                self.marker.setValue(math.log10(result.suggested_lr))  # log-mode axes take log10 positions
                self.marker.show()
                self.use_button.setEnabled(True)
                self.status.setText(f"Suggested learning rate {result.suggested_lr:.2e} ({result.status} after "
                                    f"{result.steps} steps; lowest smoothed loss at {result.min_loss_lr:.2e}). "
                                    f"Plot and curve: {result.run_dir}")
            else:
                self.status.setText(f"No suggestion ({result.status}): {result.reason}")
        self.finishedTest.emit(result)

    @Slot()
    def _use(self) -> None:
        if self.result is not None and self.result.suggested_lr is not None:
            self.useLearningRate.emit(float(f"{self.result.suggested_lr:.2e}"))

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.timer.stop()
        self.job.shutdown()
        super().closeEvent(event)
