"""RunsTab: the runs under the output folder (RunIndex: the folders are the truth, SQLite indexes them), their
loss curves overlaid for comparison, and Open / Resume.

Listing reads every run's metrics.jsonl, so it runs on a pool thread, as does loading the curves.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QUrl, Qt, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QLabel, QPushButton, QSplitter, QTreeWidget,
                               QTreeWidgetItem, QVBoxLayout, QWidget)

from ftstudio.core.runs import RunIndex, read_metrics

from .worker import JobRunner

COLUMNS = ("run", "model", "dataset", "status", "steps", "train loss", "eval loss", "accuracy", "started")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def list_runs(root: str) -> list[tuple[object, float | None]]:
    """The runs under ``root`` with each one's last validation accuracy (classifiers; None otherwise)."""
    out = []
    for s in RunIndex(root).refresh():
        acc = None
        for e in read_metrics(s.path):
            if e.get("event") == "eval" and isinstance(e.get("accuracy"), (int, float)):
                acc = float(e["accuracy"])
            elif e.get("event") == "finished" and isinstance((e.get("eval") or {}).get("accuracy"), (int, float)):
                acc = float(e["eval"]["accuracy"])
        out.append((s, acc))
    return out


def load_curves(run_dirs: list[str]) -> dict[str, dict]:
    out = {}
    for d in run_dirs:
        events = read_metrics(d)
        steps = [(e["step"], e["loss"]) for e in events if e.get("event") == "step" and e.get("loss") is not None]
        evals = [(e["step"], e["loss"]) for e in events if e.get("event") == "eval" and e.get("loss") is not None]
        out[d] = {"events": events, "train": steps, "eval": evals}
    return out


class RunsTab(QWidget):
    openRun = Signal(str, list)  # run folder, its events
    resumeRun = Signal(str)
    refreshed = Signal(int)
    curvesLoaded = Signal(int)

    def __init__(self, jobs_pool=None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("runsTab")
        self.root: str | None = None
        self.summaries: list = []
        self.curves: dict[str, dict] = {}
        self.running_dir: str | None = None  # the run in progress: listed, never offered for Resume
        self.live_steps: tuple[int, int] | None = None  # (step, total) of the run in progress, from the monitor
        self.accuracy: dict[str, float | None] = {}  # run folder → last validation accuracy
        self.jobs = JobRunner(jobs_pool, self)
        self.jobs.done.connect(self._job_done)
        self.jobs.failed.connect(self._job_failed)
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.root_label = QLabel("")
        row.addWidget(self.root_label, 1)
        self.buttons = {}
        for text, slot, tip in (("Refresh", self.refresh, "Scan the output folder again."),
                                ("Open", self._open, "Load the run's config into the form and its curves into "
                                 "the monitor."),
                                ("Resume", self._resume, "Continue the run from its newest complete checkpoint."),
                                ("Show folder", self._show_folder, "Open the run folder in the file manager.")):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            row.addWidget(b)
            self.buttons[text] = b
        lay.addLayout(row)
        split = QSplitter(Qt.Orientation.Vertical)
        self.table = QTreeWidget()
        self.table.setObjectName("runsTable")
        self.table.setHeaderLabels(list(COLUMNS))
        self.table.setRootIsDecorated(False)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.itemDoubleClicked.connect(self._open)
        split.addWidget(self.table)
        self.plot = pg.PlotWidget(title="Loss of the selected runs (solid: train, dashed: eval)")
        self.plot.setObjectName("runsPlot")
        self.plot.setLabel("bottom", "step")
        self.plot.setLabel("left", "loss")
        self.plot.addLegend(offset=(-10, 10))
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        split.addWidget(self.plot)
        lay.addWidget(split, 1)

    def set_root(self, root: str) -> None:
        if root != self.root:
            self.root = root
            self.root_label.setText(f"Runs in <b>{Path(root).resolve()}</b>")
            self.refresh()

    @Slot()
    def refresh(self) -> None:
        if self.root:
            root = self.root
            self.jobs.submit(("list", root), lambda: list_runs(root))

    def selected_dirs(self) -> list[str]:
        return [i.data(0, Qt.ItemDataRole.UserRole) for i in self.table.selectedItems()]

    def set_running(self, run_dir: str | None) -> None:
        """The folder of the run in progress (None when none): its row says so and Resume skips it."""
        self.running_dir = str(Path(run_dir).resolve()) if run_dir else None
        if run_dir is None:
            self.live_steps = None
        self._fill(self.summaries)
        self._update_buttons()

    def set_live_steps(self, step: int, total: int) -> None:
        """The run in progress has reached ``step`` of ``total``: its row says so (its metrics file lags, and a
        row listed as the run started said "0")."""
        self.live_steps = (step, total)
        for i in range(self.table.topLevelItemCount()):
            item = self.table.topLevelItem(i)
            if self._is_running(str(item.data(0, Qt.ItemDataRole.UserRole))):
                item.setText(COLUMNS.index("steps"), self._live_text())

    def _live_text(self) -> str:
        step, total = self.live_steps or (0, 0)
        return f"{step} / {total}" if step else "starting"

    def _is_running(self, path: str) -> bool:
        return self.running_dir is not None and str(Path(path).resolve()) == self.running_dir

    def _update_buttons(self) -> None:
        dirs = self.selected_dirs()
        running = bool(dirs) and self._is_running(dirs[0])
        self.buttons["Resume"].setEnabled(bool(dirs) and not running)
        self.buttons["Resume"].setToolTip("This run is in progress." if running else
                                          "Continue the run from its newest complete checkpoint.")

    @Slot()
    def _selection_changed(self) -> None:
        self._update_buttons()
        dirs = self.selected_dirs()[:8]
        self.jobs.submit(("curves", tuple(dirs)), lambda: load_curves(dirs))

    @Slot(object, object)
    def _job_done(self, tag, result) -> None:
        if tag[0] == "list":
            if tag[1] != self.root:
                return
            self.summaries = [s for s, _ in result]
            self.accuracy = {s.path: acc for s, acc in result}
            self._fill(self.summaries)
            self.refreshed.emit(len(result))
        elif tag[0] == "curves" and list(tag[1]) == self.selected_dirs()[:8]:
            self.curves = result
            self._draw(result)
            self.curvesLoaded.emit(len(result))

    @Slot(object, object)
    def _job_failed(self, tag, exc) -> None:
        self.root_label.setText(f"Cannot read runs: {exc}")

    def _fill(self, summaries) -> None:
        selected = set(self.selected_dirs())
        self.table.blockSignals(True)
        self.table.clear()
        for s in summaries:
            started = datetime.datetime.fromtimestamp(s.started).strftime("%Y-%m-%d %H:%M")
            acc = self.accuracy.get(s.path)
            running = self._is_running(s.path)
            status = "running" if running else s.status
            item = QTreeWidgetItem([s.name, Path(s.model).name or s.model, Path(s.dataset).name or s.dataset, status,
                                    self._live_text() if running else str(s.steps),
                                    "–" if s.train_loss is None else f"{s.train_loss:.4f}",
                                    "–" if s.eval_loss is None else f"{s.eval_loss:.4f}",
                                    "–" if acc is None else f"{acc:.1%}", started])
            item.setData(0, Qt.ItemDataRole.UserRole, s.path)
            item.setToolTip(0, s.path)
            self.table.addTopLevelItem(item)
            item.setSelected(s.path in selected)
        self.table.blockSignals(False)
        for c in range(len(COLUMNS)):
            self.table.resizeColumnToContents(c)
        self._update_buttons()

    def _draw(self, curves: dict) -> None:
        self.plot.clear()
        for i, (d, c) in enumerate(curves.items()):
            color = PALETTE[i % len(PALETTE)]
            name = Path(d).name
            if c["train"]:
                xs, ys = zip(*c["train"])
                self.plot.plot(xs, ys, pen=pg.mkPen(color, width=2), name=name)
            if c["eval"]:
                xs, ys = zip(*c["eval"])
                self.plot.plot(xs, ys, pen=pg.mkPen(color, width=2, style=Qt.PenStyle.DashLine), symbol="o",
                               symbolSize=5, symbolBrush=color)

    @Slot()
    def _open(self, *_args) -> None:
        dirs = self.selected_dirs()
        if dirs:
            self.openRun.emit(dirs[0], self.curves.get(dirs[0], {}).get("events") or read_metrics(dirs[0]))

    @Slot()
    def _resume(self) -> None:
        dirs = self.selected_dirs()
        if dirs and not self._is_running(dirs[0]):
            self.resumeRun.emit(dirs[0])

    @Slot()
    def _show_folder(self) -> None:
        dirs = self.selected_dirs()
        if dirs:
            QDesktopServices.openUrl(QUrl.fromLocalFile(dirs[0]))
