"""The configuration panels on the left of the main window."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFormLayout, QLabel, QVBoxLayout


def add_fact_rows(lay: QVBoxLayout, rows: tuple[tuple[str, str], ...], status_name: str,
                  *, selectable: bool = False) -> tuple[dict[str, QLabel], QLabel]:
    """A form of read-only facts ("Rows: 480") and a status line under it; returns (fields by key, status)."""
    form = QFormLayout()
    fields: dict[str, QLabel] = {}
    for key, label in rows:
        w = QLabel("–")
        if selectable:
            w.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        w.setWordWrap(True)
        fields[key] = w
        form.addRow(label + ":", w)
    lay.addLayout(form)
    status = QLabel("")
    status.setObjectName(status_name)
    status.setWordWrap(True)
    lay.addWidget(status)
    return fields, status
