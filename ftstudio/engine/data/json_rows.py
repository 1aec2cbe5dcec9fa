"""JSON and JSON Lines files → row dicts, every problem named by its 1-based row (line) and field.

A JSON document may be an array of rows, ``{"data": [...]}`` (one list of rows among other fields),
``{"train": [...], "test": [...]}`` (the train split is read; the others are reported unused), a dict of columns
(``{"text": [...], "label": [...]}``, as pandas' ``to_dict("list")`` writes), or one object (one row). A .jsonl
that holds one document over several lines is read as that document. Duplicate keys, strings that are not
valid Unicode (lone surrogates from a cut ``\\ud83d`` escape) and nesting too deep for Python's parser are
reported, never raised. ``res`` is the reader's LoadResult (``add``, ``problem``, ``errors``).
"""
from __future__ import annotations

import json
import re
import sys

SPLIT_NAMES = ("train", "validation", "valid", "val", "dev", "test")
_LINE_END = re.compile(r"\r\n|\r|\n")  # lone CRs too (old Mac files); raw CRs inside JSON strings are invalid
_DUPS = object()  # the key under which a parsed object keeps the keys it saw twice (no JSON key can equal it)


def _object_pairs(pairs):
    """json object hook that keeps duplicate keys visible instead of silently keeping the last one."""
    obj: dict = {}
    for k, v in pairs:
        if k in obj:
            obj.setdefault(_DUPS, []).append(k)
        obj[k] = v
    return obj


def _loads(text: str):
    """json.loads with duplicate keys kept visible; RecursionError becomes a JSONDecodeError-like ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_object_pairs)
    except RecursionError:
        raise _TooDeep() from None


class _TooDeep(ValueError):
    """The JSON nests deeper than Python's parser can follow."""


def _clean(obj, res, row: int) -> None:
    """Report (by field) each duplicate key and each string that is not valid Unicode (a lone surrogate from a
    ``\\ud83d`` escape cut off its pair), and remove the duplicate-key markers. Iterative: any depth."""
    stack = [(obj, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for k in node.pop(_DUPS, ()):
                res.problem(row, f"{where}{_shown(k)}",
                            f"key {_shown(k)!r} appears more than once in this object; keep one")
            items = list(node.items())
            for k, v in items:
                _check_unicode(k, f"{where}{_shown(k)}", res, row, "key")
            stack += [(v, f"{where}{_shown(k)}.") for k, v in reversed(items)]
        elif isinstance(node, list):
            stack += [(v, f"{where[:-1]}[{i}].") for i, v in reversed(list(enumerate(node)))]
        elif isinstance(node, str):
            _check_unicode(node, where[:-1] or None, res, row, "text")


def _shown(key: str) -> str:
    """A key as it can be printed: a lone surrogate as its \\u escape."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(key, str) else str(key)


def _check_unicode(s, fld: str | None, res, row: int, what: str) -> None:
    if not isinstance(s, str):
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        res.problem(row, fld, f"invalid Unicode in this {what}: a lone surrogate (\\u{ord(s[e.start]):04x}) at "
                              f"character {e.start + 1}, half of an escaped pair such as an emoji; fix the escape")


def _add_object(obj, res, row: int, what: str) -> None:
    nerr = len(res.errors)
    if isinstance(obj, (dict, list)):
        _clean(obj, res, row)
    if not isinstance(obj, dict):
        res.problem(row, None, f"{what} is a JSON {_json_type(obj)}, expected an object such as "
                               '{"text": "..."}')
        return
    if len(res.errors) == nerr:
        res.add(obj, row)


def _json_type(v) -> str:
    for kind, name in ((bool, "boolean"), (dict, "object"), (list, "array"), (str, "string"), (int, "number"),
                       (float, "number"), (type(None), "null")):
        if isinstance(v, kind):
            return name
    return type(v).__name__


def _too_deep(res, row: int | None) -> None:
    res.problem(row, None, f"the JSON nests more than about {sys.getrecursionlimit()} levels deep, too deep to read; "
                            "flatten it to objects of text fields")


def read_jsonl(text: str, res, max_line: int) -> None:
    lines = _LINE_END.split(text)
    first = next((ln for ln in lines if ln.strip()), "")
    if first.lstrip().startswith(("[", "{")) and len(lines) > 1:
        try:  # one JSON document over several lines (an array, a pretty-printed object) named .jsonl
            _loads(first)
        except ValueError:
            try:
                doc = _loads(text)
            except ValueError:
                doc = None
            if doc is not None:
                res.problem(None, None, "the file holds one JSON document, not JSON Lines; it was read as JSON",
                            "warning")
                _rows_of_json(doc, res)
                return
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > max_line:
            res.problem(lineno, None, f"line is {len(line):,} characters long (limit {max_line:,}); "
                                      "is a newline missing?")
            continue
        try:
            obj = _loads(line)
        except _TooDeep:
            _too_deep(res, lineno)
            continue
        except json.JSONDecodeError as e:
            res.problem(lineno, None, f"invalid JSON at column {e.colno}: {e.msg}; fix that spot, or remove the line")
            continue
        _add_object(obj, res, lineno, "the line")


def read_json(text: str, res, max_line: int) -> None:
    """A JSON document of rows (see _rows_of_json), or JSON Lines named .json."""
    try:
        obj = _loads(text)
    except _TooDeep:
        _too_deep(res, None)
        return
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: it is JSON Lines with a .json name
            read_jsonl(text, res, max_line)
            return
        res.problem(e.lineno, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}; fix that spot")
        return
    _rows_of_json(obj, res)


def _is_columns(obj: dict) -> bool:
    """A dict of columns ({"text": [...], "label": [...]}), as pandas' to_dict("list") and datasets write."""
    keys = [k for k in obj if k is not _DUPS]
    if not keys or "messages" in keys or "conversations" in keys:
        return False
    cols = [obj[k] for k in keys]
    if not all(isinstance(c, list) and c for c in cols):
        return False
    return len(keys) > 1 or not any(isinstance(x, (dict, list)) for x in cols[0])


def _rows_of_json(obj, res, depth: int = 0) -> None:
    """Rows from: an array of objects; {"data": [...]} (one list among other fields); {"train": [...], ...}
    (the train split, others reported unused); a dict of columns; or one object (one row)."""
    if isinstance(obj, list):
        for i, item in enumerate(obj, 1):
            _add_object(item, res, i, f"item {i}")
        return
    if not isinstance(obj, dict):
        res.problem(None, None, f"the file holds a JSON {_json_type(obj)}; expected an array of objects")
        return
    keys = [k for k in obj if k is not _DUPS]
    splits = [k for k in keys if k in SPLIT_NAMES and isinstance(obj[k], (list, dict))]
    if "train" in splits and depth < 2:
        others = [k for k in splits if k != "train"]
        if others:
            res.problem(None, None, f"the file holds the splits {', '.join(['train'] + others)}: 'train' was read, "
                                    f"{', '.join(map(repr, others))} not (save a split to its own file for "
                                    "--val-dataset)", "warning")
        _clean_markers(obj, res)
        _rows_of_json(obj["train"], res, depth + 1)
        return
    tables = [k for k in keys if isinstance(obj[k], list) and obj[k] and all(isinstance(x, dict) for x in obj[k])]
    if len(tables) > 1 and all(k in tables for k in keys if isinstance(obj[k], list)):
        res.problem(None, None, f"the file holds several lists of rows ({', '.join(map(repr, tables))}) and none is "
                                "named 'train'; save the one to train on as its own file")
        return
    if _is_columns(obj):
        _clean_markers(obj, res)
        lengths = {k: len(obj[k]) for k in keys}
        if len(set(lengths.values())) > 1:
            res.problem(None, None, "the file is a dict of columns of different lengths (" +
                        ", ".join(f"{k}: {n}" for k, n in lengths.items()) + "); every column needs one value per row")
            return
        for i, values in enumerate(zip(*(obj[k] for k in keys)), 1):
            _add_object(dict(zip(keys, values)), res, i, f"row {i}")
        return
    lists = [k for k in keys if isinstance(obj[k], list)]
    if len(lists) == 1 and obj[lists[0]] and all(isinstance(x, dict) for x in obj[lists[0]]):
        _clean_markers(obj, res)
        rest = [k for k in obj if k != lists[0]]
        if rest:   # the fields beside the list are not rows: said, not dropped unseen
            res.problem(None, None, f"rows read from the list {lists[0]!r}; the file's other top-level field"
                                    f"{'s' if len(rest) > 1 else ''} ({', '.join(map(repr, rest))}) "
                                    f"{'are' if len(rest) > 1 else 'is'} not rows and not read", "info")
        _rows_of_json(obj[lists[0]], res, depth + 1)
        return
    nested = [k for k in keys if isinstance(obj[k], dict) and (_is_columns(obj[k]) or "train" in obj[k])]
    if len(keys) == 1 and nested and depth < 2:  # {"data": {"text": [...], "label": [...]}}
        _clean_markers(obj, res)
        _rows_of_json(obj[nested[0]], res, depth + 1)
        return
    _add_object(obj, res, 1, "the file")  # a single object is one row


def _clean_markers(obj: dict, res) -> None:
    for k in obj.pop(_DUPS, ()):
        res.problem(None, k, f"key {k!r} appears more than once at the top of the file; keep one")
