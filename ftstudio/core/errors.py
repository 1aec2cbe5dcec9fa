"""Errors a user can read: each names what was wrong and where.

Pure Python: no torch, no Qt.
"""
from __future__ import annotations

from dataclasses import dataclass


class FTStudioError(Exception):
    """Base for errors that are the user's to fix (shown as one line, no traceback)."""


class ConfigError(FTStudioError, ValueError):
    """An invalid configuration value. ``field`` is the dotted path, e.g. ``optim.lr``."""

    def __init__(self, field: str, message: str, *, line: int | None = None, file: str | None = None):
        self.field = field
        self.message = message
        self.line = line
        self.file = file
        where = ""
        if file or line:
            where = (file or "<config>") + (f", line {line}" if line else "") + ": "
        super().__init__(f"{where}{field}: {message}")


class ModelError(FTStudioError):
    """A model that cannot be found, read or loaded."""


@dataclass
class DataProblem:
    """One problem in a dataset: where it is and what is wrong."""

    path: str
    row: int | None  # 1-based line/row number in the file; None when the whole file is at fault
    field: str | None
    reason: str
    severity: str = "error"  # "error" stops a run; "warning" does not; "info" says a choice made for the user

    def __str__(self) -> str:
        where = self.path
        if self.row is not None:
            where += f", row {self.row}"
        if self.field:
            where += f", field '{self.field}'"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"path": self.path, "row": self.row, "field": self.field,
                "reason": self.reason, "severity": self.severity}


class DataError(FTStudioError):
    """One or more problems in a dataset. ``problems`` lists every one found (nothing is lost)."""

    def __init__(self, path: str, row: int | None = None, field: str | None = None,
                 reason: str = "", *, problems: list[DataProblem] | None = None):
        if problems is None:
            problems = [DataProblem(path, row, field, reason)]
        self.problems = problems
        first = problems[0]
        self.path, self.row, self.field, self.reason = first.path, first.row, first.field, first.reason
        n = len(problems) - 1
        more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
        super().__init__(str(first) + more)


class OutOfMemoryAdvice(FTStudioError):
    """Raised (as a RunFailed reason) when a run does not fit: carries the plan and the advice."""
