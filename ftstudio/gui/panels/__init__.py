"""The configuration panels on the left of the main window."""
from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QSizePolicy, QVBoxLayout

_BREAK_AFTER = re.compile(r"([/\\_.,:=-])(?=\S)")


def breakable(text: str) -> str:
    """``text`` with zero-width spaces after path separators and punctuation, so a QLabel can wrap a long path
    or error message (it wraps only at spaces) instead of widening the whole form to fit it."""
    return _BREAK_AFTER.sub("\\1\u200b", text)


def wrapping_label(text: str = "") -> QLabel:
    """A word-wrapped label that takes the width it is given and never asks for more."""
    w = QLabel(text)
    w.setWordWrap(True)
    w.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    w.setMinimumWidth(60)
    return w


def add_fact_rows(lay: QVBoxLayout, rows: tuple[tuple[str, str], ...], status_name: str,
                  *, selectable: bool = False) -> tuple[dict[str, QLabel], QLabel]:
    """A form of read-only facts ("Rows: 480") and a status line under it; returns (fields by key, status)."""
    form = QFormLayout()
    form.setVerticalSpacing(2)  # facts read as a list; the default gap made the panels push the window past 800 px
    fields: dict[str, QLabel] = {}
    for key, label in rows:
        w = wrapping_label("–")
        if selectable:
            w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        fields[key] = w
        form.addRow(label + ":", w)
    lay.addLayout(form)
    status = wrapping_label("")
    status.setObjectName(status_name)
    lay.addWidget(status)
    return fields, status
