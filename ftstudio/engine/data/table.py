"""Tables read as tables: the roles of a flat table's columns when their names are not the ones formats.py knows.

A table with one short, low-cardinality column (``ham``/``spam``, ``positive``/``negative``, 0/1) and one column
of longer, mostly distinct text (the SMS spam collection: ``Label<TAB>SMS``) is classification data, the first
column its label and the second its text, whatever the columns are called. Names that say their role
(``Label``, ``TEXT``, any case) decide first; otherwise the values do. Only an unambiguous reading is taken: one
label candidate and one text candidate, or nothing (then the file is read as before and validation names what
is missing). The roles found are said, with how to override them. Pure Python.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ftstudio.engine.data.formats import LABEL_COLUMNS, TEXT_COLUMNS, row_format

SAMPLE = 2000              # rows looked at
MAX_LABEL_CHARS = 40       # a label value is short ...
MAX_CLASSES = 50           # ... and there are few of them
MIN_TEXT_MEAN = 12         # a text column's values are longer on average (characters) ...
MIN_TEXT_DISTINCT = 0.5    # ... and mostly distinct


@dataclass
class TableRoles:
    text: str
    label: str
    classes: int
    how: str               # "names" (a column's name says its role, any case) or "values" (short labels, long texts)

    def line(self) -> str:
        why = (f"'{self.label}' names the label, '{self.text}' is the other column" if
               self.how == "names" and self.label.casefold() in LABEL_COLUMNS else
               f"'{self.text}' names the text, '{self.label}' is the other column" if
               self.how == "names" else f"'{self.label}' holds {self.classes} short values, '{self.text}' "
               "longer, mostly distinct texts")
        return (f"read as a table for classification: text column '{self.text}', label column '{self.label}' "
                f"({why}); set the text and label columns to choose others (--text-column, --label-column)")


def _column_stats(records: list[dict]) -> dict[str, dict]:
    stats: dict[str, dict] = {}
    for rec in records[:SAMPLE]:
        for k, v in rec.items():
            s = stats.setdefault(k, {"n": 0, "strings": 0, "chars": 0, "longest": 0, "values": Counter()})
            s["n"] += 1
            if isinstance(v, bool) or v is None:
                continue
            if isinstance(v, (int, str)):
                text = str(v).strip()
                s["strings"] += isinstance(v, str)
                s["chars"] += len(text)
                s["longest"] = max(s["longest"], len(text))
                s["values"][text] += 1
    return stats


def table_roles(records: list[dict], cfg) -> TableRoles | None:
    """The text and label columns of a flat table whose columns formats.py would not recognise, or None (also
    None when the format or both columns are set, or the rows are not a flat table of scalars)."""
    fmt = getattr(cfg, "format", "auto")
    if fmt not in ("auto", "classification") or not records or (cfg.text_column and cfg.label_column):
        return None
    if fmt == "auto" and (cfg.text_column or cfg.label_column):
        return None   # a column named by the user: formats.py reads the table as asked
    sample = records[:SAMPLE]
    if any(not isinstance(v, (str, int, float, bool, type(None))) for r in sample for v in r.values()):
        return None   # nested values: chat or other structured rows
    if any(row_format(r) not in (None, "text") or any(c in r for c in TEXT_COLUMNS) for r in sample[:200]):
        return None   # a format formats.py knows by its names (text, text + label, prompt/completion...): as it was
    keys = Counter(k for r in sample for k in r)
    stats = _column_stats(sample)
    n = len(sample)
    by_name = _by_name(keys, cfg)
    if by_name:
        text, label = by_name
        classes = len(stats[label]["values"])
        return TableRoles(text, label, classes, "names") if 1 < classes <= max(MAX_CLASSES, n // 2) else None
    labels = [k for k, s in stats.items() if k != cfg.text_column and s["values"]
              and s["longest"] <= MAX_LABEL_CHARS and 1 < len(s["values"]) <= min(MAX_CLASSES, max(2, n // 3))]
    texts = [k for k, s in stats.items() if k != cfg.label_column and s["strings"] >= 0.9 * s["n"]
             and s["chars"] / max(1, s["n"]) >= MIN_TEXT_MEAN and len(s["values"]) >= MIN_TEXT_DISTINCT * s["n"]]
    if cfg.label_column:
        labels = [cfg.label_column] if cfg.label_column in stats else []
    if cfg.text_column:
        texts = [cfg.text_column] if cfg.text_column in stats else []
    labels = [k for k in labels if k not in texts]
    if len(labels) != 1 or len(texts) != 1:
        return None
    return TableRoles(texts[0], labels[0], len(stats[labels[0]]["values"]), "values")


def _by_name(keys: Counter, cfg) -> tuple[str, str] | None:
    """(text, label) when the names say it in another case (``Text``, ``LABEL``), the other column being the
    only one left for the role formats.py cannot name."""
    folded = {k.casefold(): k for k in keys if isinstance(k, str)}
    text = cfg.text_column or next((folded[c] for c in TEXT_COLUMNS if c in folded), None)
    label = cfg.label_column or next((folded[c] for c in LABEL_COLUMNS if c in folded), None)
    rest = [k for k in keys if k not in (text, label)]
    if label and not text and len(rest) == 1:
        text = rest[0]
    if text and not label and len(rest) == 1:
        label = rest[0]
    return (text, label) if text and label and text != label else None
