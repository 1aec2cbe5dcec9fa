"""The status line beside the run buttons, and Undo for every change the window makes to the config on its own.

A mixin of MainWindow. The line holds one message at a time in the window's own words (field labels, not
flags); an error that a later success makes untrue (a model that failed, data to fix) is dropped when the
state it describes changes (:meth:`clear_stale_error`). A change the window makes to the form (a preset, the
defaults, memory advice's Apply, the learning-rate finder's or a sweep's values) is said with each field's old
and new value and an Undo button that puts the old values back (only the fields it changed).
"""
from __future__ import annotations

from PySide6.QtCore import Slot

from ftstudio.core.config import RunConfig

from .panels.form_widgets import readable


def fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def changed_leaves(before: RunConfig, after: RunConfig, leaves) -> dict[str, tuple]:
    """{leaf: (old, new)} for every form field whose value differs between two configs."""
    out = {}
    for leaf in leaves:
        old, new = before.get(leaf), after.get(leaf)
        if old != new:
            out[leaf] = (old, new)
    return out


class StatusLineMixin:
    _undo_values: dict | None = None
    _status_error_about: str | None = None  # "model" | "data" | "config" | None: what an error line is about

    def _status(self, text: str, error: bool = False, undo: dict | None = None, about: str | None = None) -> None:
        """One line beside the buttons (elided in the middle as the window resizes; the whole text in the
        tooltip and, for errors, in the log). ``undo``: {leaf: old value} offered by the Undo button."""
        self.status_text = text
        self.status_label.set_full_text(text)
        self.status_label.setStyleSheet("color: #d62728;" if error else "")
        self._status_error_about = about if error else None
        self._undo_values = dict(undo) if undo else None
        self.undo_button.setVisible(bool(undo))
        if error:
            self.monitor.append_log(text, "error")

    def clear_stale_error(self, about: str) -> None:
        """Drop an error line about ``about`` (the model, the data, the config) once that has changed."""
        if self._status_error_about == about:
            self._status("")

    def say_change(self, what: str, before: RunConfig, after: RunConfig | None = None) -> dict:
        """Tell the user what ``what`` changed in the form, with Undo; returns {leaf: (old, new)}."""
        after = after or self.config()
        diff = changed_leaves(before, after, self.training_panel.editors)
        if not diff:
            self._status(f"{what}: nothing changed (the form already had these values).")
            return diff
        parts = [f"{readable(k)} {fmt_value(a)} → {fmt_value(b)}" for k, (a, b) in diff.items()]
        self._status(f"{what}: " + ", ".join(parts) + ".", undo={k: a for k, (a, _b) in diff.items()})
        return diff

    @Slot()
    def undo_window_change(self) -> None:
        values = self._undo_values
        if not values or self.runs.running:
            return
        before = self.config()
        self.training_panel.set_values(**values)
        diff = changed_leaves(before, self.config(), values)
        self._status("Undone: " + ", ".join(f"{readable(k)} back to {fmt_value(b)}" for k, (_a, b) in diff.items())
                     + "." if diff else "Nothing to undo: the form already has those values.")
