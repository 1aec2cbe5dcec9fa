"""ClassFiguresView: what a classifier's accuracy means, beside the run log. The last evaluation's accuracy next
to the majority-class baseline (what always answering the most frequent class scores), a table of each class's
precision, recall, F1, support (true rows) and how often it was predicted, and the engine's collapse warning in
red when nearly every prediction is one class. Fed by the monitor from EvalMetrics events (live, or replayed
from a finished run's metrics.jsonl) and from RunFinished's final evaluation; hidden for runs that are not
classifiers.
"""
from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QSplitter, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

COLUMNS = ("class", "precision", "recall", "F1", "support", "predicted")
WARN = "#d62728"


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def class_f1(d: dict) -> float | None:
    """The class's F1: the engine's when the run saved it, else from precision and recall (older runs); a class
    never got right (recall 0) scores 0."""
    if d.get("f1") is not None:
        return d["f1"]
    p, r = d.get("precision"), d.get("recall")
    if r == 0:
        return 0.0
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r else 0.0


class ClassFiguresView(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("classFigures")
        self.headline = QLabel()
        self.headline.setObjectName("classHeadline")
        self.headline.setWordWrap(True)
        self.headline.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.warning = QLabel()
        self.warning.setObjectName("collapseWarning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet(f"color: {WARN};")
        self.warning.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("perClassTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for i in range(1, len(COLUMNS)):
            head.setSectionResizeMode(i, QHeaderView.ResizeMode.ResizeToContents)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 0, 0, 0)
        lay.addWidget(self.headline)
        lay.addWidget(self.warning)
        lay.addWidget(self.table, 1)
        self.setMinimumHeight(240)  # headline, warning and three rows: the log pane grows to hold them when shown
        self.clear()

    def clear(self) -> None:
        self.figures: dict = {}
        self.table.setRowCount(0)
        self.headline.clear()
        self.warning.clear()
        self.warning.hide()
        self.hide()  # a run that is not a classifier never shows it

    def show_figures(self, figures: dict, step: int | None = None) -> None:
        """``figures``: an evaluation's fields (EvalMetrics as a dict, or RunFinished.eval): accuracy,
        majority_baseline, majority_class, per_class, collapsed. Without per_class (not a classifier) nothing
        changes."""
        per_class = figures.get("per_class")
        if not per_class:
            return
        self.figures = dict(figures, step=step)
        acc, base = figures.get("accuracy"), figures.get("majority_baseline")
        at = f" at step {step}" if step is not None else ""
        line = f"<b>Accuracy{at}: {_pct(acc)}</b> · majority-class baseline {_pct(base)}"
        if figures.get("majority_class") is not None:
            line += f" (always '{html.escape(str(figures['majority_class']))}')"
        if acc is not None and base is not None:
            gap = round((acc - base) * 100, 1)
            line += (f" · {gap:.1f} points above it" if gap > 0 else f" · {-gap:.1f} points below it" if gap < 0
                     else " · no better than it")
        self.headline.setText(line)
        self.warning.setText(f"⚠ {figures['collapsed']}" if figures.get("collapsed") else "")
        self.warning.setVisible(bool(figures.get("collapsed")))
        self.table.setRowCount(len(per_class))
        for row, (name, d) in enumerate(per_class.items()):
            cells = (str(name), _pct(d.get("precision")), _pct(d.get("recall")), _pct(class_f1(d)),
                     str(d.get("support", "–")), str(d.get("predicted", "–")))
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.show()

    def cell(self, row: int, col: int) -> str:
        item = self.table.item(row, col)
        return item.text() if item else ""


def beside(log: QWidget, view: ClassFiguresView) -> QSplitter:
    """The run log with the class figures at its right (the log keeps most of the width)."""
    split = QSplitter(Qt.Orientation.Horizontal)
    split.setChildrenCollapsible(False)
    split.addWidget(log)
    split.addWidget(view)
    split.setStretchFactor(0, 3)
    split.setStretchFactor(1, 2)
    return split
