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

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


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
        self.table.setHeaderLabels(["run", "model", "dataset", "status", "steps", "train loss", "eval loss",
                                    "started"])
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
            self.jobs.submit(("list", root), lambda: RunIndex(root).refresh())

    def selected_dirs(self) -> list[str]:
        return [i.data(0, Qt.ItemDataRole.UserRole) for i in self.table.selectedItems()]

    @Slot()
    def _selection_changed(self) -> None:
        dirs = self.selected_dirs()[:8]
        self.jobs.submit(("curves", tuple(dirs)), lambda: load_curves(dirs))

    @Slot(object, object)
    def _job_done(self, tag, result) -> None:
        if tag[0] == "list":
            if tag[1] != self.root:
                return
            self.summaries = result
            self._fill(result)
            self.refreshed.emit(len(result))
        elif tag[0] == "curves" and list(tag[1]) == self.selected_dirs()[:8]:
            self.curves = result
            self._draw(result)
            self.curvesLoaded.emit(len(result))

    @Slot(object, object)
    def _job_failed(self, tag, exc) -> None:
        self.root_label.setText(f"Cannot read runs: {exc}")

    def _fill(self, summaries) -> None:
        self.table.clear()
        for s in summaries:
            started = datetime.datetime.fromtimestamp(s.started).strftime("%Y-%m-%d %H:%M")
            item = QTreeWidgetItem([s.name, Path(s.model).name or s.model, Path(s.dataset).name or s.dataset, s.status,
                                    str(s.steps), "–" if s.train_loss is None else f"{s.train_loss:.4f}",
                                    "–" if s.eval_loss is None else f"{s.eval_loss:.4f}", started])
            item.setData(0, Qt.ItemDataRole.UserRole, s.path)
            item.setToolTip(0, s.path)
            self.table.addTopLevelItem(item)
        for c in range(8):
            self.table.resizeColumnToContents(c)

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
        if dirs:
            self.resumeRun.emit(dirs[0])

    @Slot()
    def _show_folder(self) -> None:
        dirs = self.selected_dirs()
        if dirs:
            QDesktopServices.openUrl(QUrl.fromLocalFile(dirs[0]))
