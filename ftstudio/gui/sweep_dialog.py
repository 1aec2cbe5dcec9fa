"""Run → Sweep: an Optuna sweep of the current config (LR range, trials, steps per trial, optional batch sizes),
its trials listed live with their state (running, pruned, complete), and a button that takes the best values
into the Training tab. Each trial is a run folder, so the Runs tab overlays their curves."""
from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (QDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout)

from ftstudio.core import events as ev

from .tool_thread import job_controls

COLUMNS = ("trial", "state", "lr", "batch", "eval", "step")


class SweepDialog(QDialog):
    useValues = Signal(object)       # {"lr": …, ["batch_size": …]} for the Training tab
    finishedSweep = Signal(object)   # the SweepResult, or None on an error (tests wait on it)
    trialsChanged = Signal()

    def __init__(self, config, parent=None):
        super().__init__(parent)
        from .engine_access import engine
        self.sweep_mod = engine("sweep", "sweep", "SweepSpec")
        self.config = config
        self.result = None
        self.rows: dict[int, dict] = {}
        self.setWindowTitle("Sweep")
        self.setObjectName("sweepDialog")
        self.resize(720, 480)
        lay = QVBoxLayout(self)
        intro = QLabel("Optuna draws the learning rate log-uniformly from the range; each trial is a real short run "
                       "(listed in the Runs tab); a median pruner stops trials whose evaluation is worse than the "
                       f"median of earlier trials at that step. Ranked by eval {config.eval.metric}.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        form = QFormLayout()
        self.lr_range = QLineEdit("1e-6:1e-4")
        self.lr_range.setObjectName("sweepLrRange")
        self.trials = QSpinBox()
        self.trials.setRange(1, 200)
        self.trials.setValue(8)
        self.max_steps = QSpinBox()
        self.max_steps.setRange(2, 100_000)
        self.max_steps.setValue(50)
        self.batch_sizes = QLineEdit("")
        self.batch_sizes.setPlaceholderText("e.g. 8,16 (empty: the config's batch size)")
        form.addRow("Learning rate range (LOW:HIGH):", self.lr_range)
        form.addRow("Trials:", self.trials)
        form.addRow("Steps per trial:", self.max_steps)
        form.addRow("Batch sizes:", self.batch_sizes)
        lay.addLayout(form)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("sweepTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        lay.addWidget(self.table, 1)
        self.status = QLabel("Press Start.")
        self.status.setObjectName("sweepStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        row = QHBoxLayout()
        row.addStretch(1)
        job_controls(self, row, "Use the best values")
        lay.addLayout(row)

    def spec(self):
        """The sweep the form describes; raises ValueError / ConfigError with one line on bad input."""
        try:
            lo, hi = (float(x) for x in self.lr_range.text().split(":"))
        except ValueError:
            raise ValueError(f"learning rate range {self.lr_range.text()!r}: give LOW:HIGH, e.g. 1e-6:1e-4") from None
        try:
            batches = [int(x) for x in self.batch_sizes.text().replace(" ", "").split(",") if x]
        except ValueError:
            raise ValueError(f"batch sizes {self.batch_sizes.text()!r}: give whole numbers such as 8,16") from None
        spec = self.sweep_mod.SweepSpec(lr_low=lo, lr_high=hi, trials=self.trials.value(),
                                        max_steps=self.max_steps.value(), batch_sizes=batches)
        spec.check()
        return spec

    @Slot()
    def start(self) -> None:
        if self.job.running:
            return
        from ftstudio.core.errors import ConfigError
        try:
            spec = self.spec()
        except (ValueError, ConfigError) as e:
            self.status.setText(str(e))
            return
        self.rows.clear()
        self.table.setRowCount(0)
        self.result = None
        self.use_button.setEnabled(False)
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("Checking the memory plan…")
        cfg, sweep = self.config, self.sweep_mod.sweep

        def job(report, control):
            return sweep(cfg, spec, report, control, on_trial=lambda row: report(("trial", row)))

        self.job.start(job)
        self.timer.start()

    @Slot()
    def stop(self) -> None:
        self.job.request_stop()
        self.status.setText("Stopping the running trial and the sweep…")

    @Slot()
    def _drain(self) -> None:
        changed = False
        while self.job.events:
            e = self.job.events.popleft()
            if isinstance(e, tuple) and e[0] == "trial":
                self.rows[e[1]["number"]] = e[1]
                changed = True
            elif isinstance(e, ev.StepMetrics):
                self.status.setText(f"Trial {len(self.rows) - 1}: step {e.step} / {e.total_steps}, loss {e.loss:.4f}")
            elif isinstance(e, ev.LogLine) and ("pruned" in e.message or e.level != "info"):
                self.status.setText(e.message)
        if changed:
            self._fill()

    def _fill(self) -> None:
        self.table.setRowCount(len(self.rows))
        for r, t in enumerate(self.rows[n] for n in sorted(self.rows)):
            best = self.result is not None and self.result.best and self.result.best["number"] == t["number"]
            cells = (str(t["number"]), t["state"] + (" (best)" if best else ""), f"{t['lr']:.2e}",
                     str(t.get("batch_size", self.config.train.batch_size)),
                     "–" if t["value"] is None else f"{t['value']:.4f}", str(t["step"]))
            for c, text in enumerate(cells):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.trialsChanged.emit()

    @Slot(object, str)
    def _done(self, result, error: str) -> None:
        self._drain()
        self.timer.stop()
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.result = result
        if error or result is None:
            self.status.setText(f"The sweep could not run: {error}")
        else:
            self._fill()
            if result.best:
                self.use_button.setEnabled(True)
                caveat = getattr(result, "caveat", "")
                self.status.setText(f"Best: trial {result.best['number']}, lr {result.best['lr']:.2e}, eval "
                                    f"{result.metric} {result.best['value']:.4f}"
                                    + (f". But {caveat}." if caveat else ".")
                                    + f" Table, plot and best.yaml in {result.folder}")
                self.status.setStyleSheet("color: #b8860b;" if caveat else "")
            else:
                self.status.setText(f"No trial completed ({result.status}).")
        self.finishedSweep.emit(result)

    @Slot()
    def _use(self) -> None:
        if self.result is not None and self.result.best:
            values = {"lr": float(f"{self.result.best['lr']:.2e}")}
            if "batch_size" in self.result.best:
                values["batch_size"] = self.result.best["batch_size"]
            self.useValues.emit(values)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.timer.stop()
        self.job.shutdown()
        super().closeEvent(event)
