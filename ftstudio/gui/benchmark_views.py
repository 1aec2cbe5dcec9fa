"""The Compare tab's Benchmarks view: lm-evaluation-harness scores of the base model and the fine-tuned one as
bars side by side, each with its standard error, and the table of base, fine-tuned and Δ.

It shows the newest record in the run folder (RUN/benchmarks/*.json: `ftstudio eval RUN`'s, or eval.benchmarks'
run.json), or scores both models from here on a background thread (``ToolThread``: the engine's
``run_benchmarks`` with the harness's own task names, Stop asked between the harness's batches) and saves the
record there as `ftstudio eval` does. The GUI thread never loads a model.
"""
from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Slot
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout)

from .engine_access import EngineMissing, engine
from .theme import COLORS
from .tool_thread import run_stop

LABELS = {"base": "base (θ0)", "fine_tuned": "fine-tuned", "model": "model"}
BAR_COLORS = {"base": COLORS["other"], "fine_tuned": COLORS["train"], "model": COLORS["train"]}


def _fmt(score: dict | None, sign: bool = False) -> str:
    if not score or score.get("value") is None:
        return "–"
    text = f"{score['value']:+.4f}" if sign else f"{score['value']:.4f}"
    return text + (f" ± {score['stderr']:.4f}" if score.get("stderr") is not None else "")


def record_rows(record: dict) -> tuple[list[str], list[dict]]:
    """(model labels in the record's order, one row per task and metric): engine.benchmarks.score_rows."""
    return list(record["models"]), engine("benchmarks", "score_rows").score_rows(record)


class BenchmarkBars(pg.PlotWidget):
    """One group of bars per task and metric: each model's score, with ±1 standard error as error bars."""

    def __init__(self, parent=None):
        super().__init__(parent=parent)
        self.setObjectName("benchmarkBars")
        self.setMinimumHeight(180)
        self.setMouseEnabled(x=False, y=False)
        self.getPlotItem().hideButtons()
        self.setLabel("left", "score")
        self.getPlotItem().getAxis("left").enableAutoSIPrefix(False)  # scores read as 0.62, not "620 (x0.001)"
        self.addLegend(offset=(5, 5))
        self.bars: dict[str, pg.BarGraphItem] = {}
        self.errors: dict[str, pg.ErrorBarItem] = {}
        self.shown: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # label → (values, standard errors) drawn

    def show_rows(self, labels: list[str], rows: list[dict]) -> None:
        self.clear()
        self.bars, self.errors, self.shown = {}, {}, {}
        if not rows:
            return
        width = 0.8 / max(1, len(labels))
        x = np.arange(len(rows), dtype=float)
        for i, label in enumerate(labels):
            vals = np.array([(r.get(label) or {}).get("value") or 0.0 for r in rows], dtype=float)
            errs = np.array([(r.get(label) or {}).get("stderr") or 0.0 for r in rows], dtype=float)
            xs = x - 0.4 + width * (i + 0.5)
            bar = pg.BarGraphItem(x=xs, height=vals, width=width * 0.9, brush=BAR_COLORS.get(label, COLORS["eval"]),
                                  pen=None, name=LABELS.get(label, label))
            err = pg.ErrorBarItem(x=xs, y=vals, top=errs, bottom=errs, beam=width * 0.3, pen=pg.mkPen("#444", width=1.5))
            self.addItem(bar)
            self.addItem(err)
            self.bars[label], self.errors[label], self.shown[label] = bar, err, (vals, errs)
        self.getPlotItem().getAxis("bottom").setTicks([[(i, f"{r['task']} · {r['metric']}") for i, r in enumerate(rows)]])
        top = max(float(np.max(v + e)) for v, e in self.shown.values())
        self.setYRange(0, max(top * 1.1, 1e-6), padding=0)
        self.setXRange(-0.6, len(rows) - 0.4, padding=0)


class BenchmarkView(QGroupBox):
    """Base vs fine-tuned benchmark scores for the open run; ``record`` is what is shown."""

    def __init__(self, parent=None):
        super().__init__("Benchmarks (lm-evaluation-harness): base vs fine-tuned, ±1 standard error", parent)
        self.setObjectName("benchmarkView")
        self.run_dir: str | None = None
        self.record: dict | None = None
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.tasks = QLineEdit("ftstudio_general_mc")
        self.tasks.setToolTip("lm-evaluation-harness task names, separated by commas (its own, e.g. hellaswag, "
                              "download their data on first use), or tasks of your own in the folder below")
        row.addWidget(QLabel("tasks:"))
        row.addWidget(self.tasks, 2)
        self.include = QLineEdit()
        self.include.setPlaceholderText("task YAML folder (optional)")
        self.include.setToolTip("A folder of harness task YAMLs over local files (--include-path)")
        row.addWidget(self.include, 2)
        browse = QPushButton("…")
        browse.setMaximumWidth(28)
        browse.clicked.connect(self._browse)
        row.addWidget(browse)
        self.limit = QSpinBox()
        self.limit.setRange(0, 1_000_000)
        self.limit.setSpecialValueText("all documents")
        self.limit.setPrefix("limit ")
        self.limit.setToolTip("Score only the first N documents of each task (0: all)")
        row.addWidget(self.limit)
        self.chat = QCheckBox("chat template")
        self.chat.setToolTip("Render the prompts through the chat template the fine-tune was trained with, for "
                             "both models (recorded with the scores)")
        row.addWidget(self.chat)
        run_stop(self, row, "Score both", self.start, ("benchmarkRunButton", "benchmarkStopButton"))
        lay.addLayout(row)
        self.status = QLabel("Open a finished run to see its benchmark record, or score both models here.")
        self.status.setWordWrap(True)
        self.status.setObjectName("benchmarkStatus")
        lay.addWidget(self.status)
        self.bars = BenchmarkBars()
        lay.addWidget(self.bars, 1)
        self.table = QTableWidget(0, 5)
        self.table.setObjectName("benchmarkTable")
        self.table.setHorizontalHeaderLabels(["task", "metric", "base", "fine-tuned", "Δ"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMaximumHeight(140)
        lay.addWidget(self.table)
        self.settings_line = QLabel("")
        self.settings_line.setWordWrap(True)
        lay.addWidget(self.settings_line)
        self._enable()

    @Slot()
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of harness task YAMLs")
        if folder:
            self.include.setText(folder)

    def set_run(self, run_dir: str | None) -> None:
        """Show the run's newest benchmark record (or nothing yet)."""
        self.run_dir = run_dir
        record = None
        if run_dir:
            try:
                record = engine("benchmarks", "latest_record").latest_record(run_dir)
            except EngineMissing as e:
                self.status.setText(str(e))
        if record:
            self.show_record(record)
            self.status.setText(f"The run's newest benchmark record ({run_dir}/benchmarks, {record.get('created', '')})")
        else:
            self.record = None
            self.bars.show_rows([], [])
            self.table.setRowCount(0)
            self.settings_line.setText("")
            self.status.setText("No benchmark record in this run yet: choose tasks and press Score both.")
        self._enable()

    def show_record(self, record: dict) -> None:
        self.record = record
        labels, rows = record_rows(record)
        self.bars.show_rows(labels, rows)
        heads = ["task", "metric", *(LABELS.get(lbl, lbl) for lbl in labels)] + (["Δ"] if "delta" in record else [])
        self.table.setColumnCount(len(heads))
        self.table.setHorizontalHeaderLabels(heads)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = [r["task"], r["metric"], *(_fmt(r.get(lbl)) for lbl in labels)]
            if "delta" in record:
                cells.append(_fmt(r.get("delta"), sign=True))
            for j, text in enumerate(cells):
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        s = record.get("settings") or {}
        if s.get("tasks"):  # Score both repeats the record's settings unless the user changes them
            self.tasks.setText(",".join(s["tasks"]))
            self.include.setText(",".join(s.get("include_path") or []))
            self.limit.setValue(int(s["limit"]) if isinstance(s.get("limit"), int) else 0)
            self.chat.setChecked(bool(s.get("apply_chat_template")))
        shots = s.get("num_fewshot")
        self.settings_line.setText(
            f"<small>lm-eval {s.get('lm_eval_version', '?')} · few-shot {shots if shots is not None else 'task default'}"
            f" · chat template {'on' if s.get('apply_chat_template') else 'off'} · batch {s.get('batch_size', '?')}"
            f" · limit {s.get('limit') if s.get('limit') is not None else 'none'} · seed {s.get('seed', '?')}"
            f" · {s.get('device', '')} {s.get('dtype', '')}</small>")

    def settings(self):
        bench = engine("benchmarks", "BenchSettings")
        tasks = [t.strip() for t in self.tasks.text().split(",") if t.strip()]
        folders = [p.strip() for p in self.include.text().split(",") if p.strip()]
        return bench.BenchSettings(tasks=tasks, include_path=folders,
                                   limit=self.limit.value() or None, apply_chat_template=self.chat.isChecked())

    @Slot()
    def start(self) -> None:
        if not self.run_dir or self.job.running:
            return
        try:
            settings, mod = self.settings(), engine("benchmarks", "run_benchmarks", "save_record")
        except EngineMissing as e:
            self.status.setText(str(e))
            return
        run_dir = self.run_dir

        def job(emit, control):
            record = mod.run_benchmarks(run_dir, settings, report=emit, should_stop=lambda: control.stop_requested)
            record["saved_to"] = str(mod.save_record(record))
            return record

        self.status.setText("Loading the base model…")
        self.job.start(job)
        self.timer.start()
        self._enable()

    @Slot()
    def stop(self) -> None:
        self.job.request_stop()
        self.status.setText("Stopping after the harness's current batch…")

    @Slot()
    def _drain(self) -> None:
        last = None
        while self.job.events:
            last = self.job.events.popleft()
        if last is not None:
            self.status.setText(str(last))

    @Slot(object, str)
    def _done(self, record, error: str) -> None:
        self.timer.stop()
        self._drain()
        if error:
            self.status.setText(f"<span style='color:#d62728'>{error}</span>")
        elif record:
            self.show_record(record)
            self.status.setText(f"Scored; recorded in {record.get('saved_to')}")
        self._enable()

    def _enable(self) -> None:
        busy = self.job.running
        self.run_button.setEnabled(bool(self.run_dir) and not busy)
        self.stop_button.setEnabled(busy)

    def shutdown(self) -> None:
        self.timer.stop()
        self.job.shutdown()
