"""Reading dataset files into plain row dicts, reporting every bad row (file, row, field, reason).

Line-oriented files (JSONL, JSON, CSV, TSV, .txt) are read here with the standard library rather than
`datasets`' builders: those stop at the first bad line with an Arrow error that names neither the line
nor the field, and they coerce CSV cells to numbers. Reading them ourselves lets us report *every*
problem with its 1-based line. Columnar sources (Parquet, `save_to_disk` folders, hub ids) go through
`datasets`, whose rows are already typed; their row numbers are 1-based row indices.

Policy on a UTF-8 byte-order mark: accepted (stripped) with a warning, because Excel and Notepad write one
and the text is still valid UTF-8.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ftstudio.core.errors import DataError, DataProblem

MAX_LINE_CHARS = 1_000_000  # one row longer than this is almost certainly a broken file, not a sample
MAX_PROBLEMS = 1000  # stop collecting past this: the user has enough to fix, and memory stays bounded
SNIFF_BYTES = 8192

TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                 ".txt": "txt", ".text": "txt", ".parquet": "parquet", ".pq": "parquet"}


def resources_dir() -> Path:
    """The repository's resources/ folder: next to the package (source tree, editable install), else in a
    PyInstaller bundle (sys._MEIPASS/resources)."""
    here = Path(__file__).resolve().parents[3] / "resources"
    if here.is_dir():
        return here
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass and (Path(meipass) / "resources").is_dir():
        return Path(meipass) / "resources"
    return here


def demo_dataset_path() -> Path:
    """The bundled demo classification data (legal clauses, 8 classes; CC0, written by this project)."""
    return resources_dir() / "demo" / "legal_clauses.jsonl"


@dataclass
class LoadResult:
    """Rows read from one source. ``rows[i]`` is the 1-based line/row number of ``records[i]``."""

    path: str
    records: list[dict] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)

    def add(self, record: dict, row: int) -> None:
        self.records.append(record)
        self.rows.append(row)

    def problem(self, row: int | None, fld: str | None, reason: str, severity: str = "error") -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(DataProblem(self.path, row, fld, reason, severity))

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]


def read_source(path: str, *, fmt_hint: str | None = None) -> LoadResult:
    """Read a file, a `save_to_disk` folder or a hub id. Never raises for data problems: collects them."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _read_folder(p)
    if not p.exists():
        if _looks_like_hub_id(path):
            return _read_hub(path)
        res = LoadResult(str(path))
        res.problem(None, None, "no such file or folder")
        return res
    kind = fmt_hint or TEXT_SUFFIXES.get(p.suffix.lower())
    res = LoadResult(str(p))
    if kind is None:
        res.problem(None, None, f"unsupported file type {p.suffix or '(no extension)'!r}; use "
                                ".jsonl, .json, .csv, .tsv, .txt, .parquet or a folder saved by datasets")
        return res
    if kind == "parquet":
        return _read_parquet(p, res)
    text = _decode(p, res)
    if text is None:
        return res
    if kind == "jsonl":
        _read_jsonl(text, res)
    elif kind == "json":
        _read_json(text, res)
    elif kind in ("csv", "tsv"):
        _read_csv(text, res, "\t" if kind == "tsv" else ",")
    else:
        _read_txt(text, res)
    if not res.records and not res.errors:
        res.problem(None, None, "the file holds no rows")
    return res


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return (len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))
            and not Path(s).suffix.lower() in TEXT_SUFFIXES)


def _decode(p: Path, res: LoadResult) -> str | None:
    """Bytes → text, with a clear message for empty, binary, UTF-16 and non-UTF-8 files."""
    try:
        data = p.read_bytes()
    except OSError as e:
        res.problem(None, None, f"cannot read the file: {e.strerror or e}")
        return None
    if not data.strip():
        res.problem(None, None, "the file is empty")
        return None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        res.problem(None, None, "the file is UTF-16 encoded; save it as UTF-8")
        return None
    if data[:4] == b"PAR1":
        res.problem(None, None, "this is a Parquet file; give it the .parquet extension")
        return None
    if b"\x00" in data[:SNIFF_BYTES]:
        res.problem(None, None, "this is a binary file (it contains NUL bytes), not text")
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        res.problem(1, None, "the file starts with a UTF-8 byte-order mark; it was ignored", "warning")
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # Report every line that is not UTF-8, with the byte offset inside the line.
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            res.problem(lineno, None, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                      "re-save the file as UTF-8")
    return None


def _strict_object_pairs(pairs):
    """json object hook that keeps duplicate keys visible instead of silently keeping the last one."""
    seen: dict = {}
    for k, v in pairs:
        if k in seen:
            dups = seen.setdefault("\x00duplicates", [])
            dups.append(k)
        seen[k] = v
    return seen


def _clean_duplicates(obj, where: str, res: LoadResult, row: int) -> object:
    """Remove the duplicate-key markers (recursively), reporting each as a problem."""
    if isinstance(obj, dict):
        for k in obj.pop("\x00duplicates", []):
            res.problem(row, f"{where}{k}", f"key {k!r} appears more than once in this object")
        for k, v in obj.items():
            obj[k] = _clean_duplicates(v, f"{where}{k}.", res, row)
    elif isinstance(obj, list):
        return [_clean_duplicates(v, f"{where[:-1]}[{i}].", res, row) for i, v in enumerate(obj)]
    return obj


def _add_object(obj, res: LoadResult, row: int, what: str) -> None:
    nerr = len(res.errors)
    obj = _clean_duplicates(obj, "", res, row)
    if not isinstance(obj, dict):
        res.problem(row, None, f"{what} is a JSON {_json_type(obj)}, expected an object such as "
                               '{"text": "..."}')
        return
    if len(res.errors) == nerr:
        res.add(obj, row)


def _json_type(v) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null", dict: "object"}.get(type(v), type(v).__name__)


def _read_jsonl(text: str, res: LoadResult) -> None:
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            res.problem(lineno, None, f"line is {len(line):,} characters long (limit {MAX_LINE_CHARS:,}); "
                                      "is a newline missing?")
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_strict_object_pairs)
        except json.JSONDecodeError as e:
            res.problem(lineno, None, f"invalid JSON at column {e.colno}: {e.msg}")
            continue
        _add_object(obj, res, lineno, "the line")


def _read_json(text: str, res: LoadResult) -> None:
    """A JSON array of objects, an object holding one such array (e.g. {"data": [...]}), or JSON Lines."""
    try:
        obj = json.loads(text, object_pairs_hook=_strict_object_pairs)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: it is JSON Lines with a .json name
            _read_jsonl(text, res)
            return
        res.problem(e.lineno, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")
        return
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list) and k != "\x00duplicates"]
        if len(lists) == 1 and all(isinstance(x, dict) for x in obj[lists[0]]):
            obj = obj[lists[0]]
        else:
            _add_object(obj, res, 1, "the file")  # a single object is one row
            return
    if not isinstance(obj, list):
        res.problem(None, None, f"the file holds a JSON {_json_type(obj)}; expected an array of objects")
        return
    for i, item in enumerate(obj, 1):
        _add_object(item, res, i, f"item {i}")


def _read_csv(text: str, res: LoadResult, delimiter: str) -> None:
    name = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            row, start = start, reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                for i, h in enumerate(header):
                    if not h:
                        res.problem(row, f"column {i + 1}", f"the {name} header has an empty column name")
                    elif header.index(h) != i:
                        res.problem(row, h, f"column name {h!r} appears twice in the {name} header")
                continue
            if len(cells) != len(header):
                plural = "s" if len(cells) != 1 else ""
                res.problem(row, None, f"row has {len(cells)} field{plural} but the header has {len(header)} "
                                       f"({', '.join(header)}); check quoting and delimiters")
                continue
            long = [h for h, c in zip(header, cells) if len(c) > MAX_LINE_CHARS]
            if long:
                res.problem(row, long[0], f"cell is over {MAX_LINE_CHARS:,} characters; is a quote unclosed?")
                continue
            res.add(dict(zip(header, cells)), row)
    except csv.Error as e:
        res.problem(start, None, f"malformed {name}: {e} (an unclosed quote?)")


def _read_txt(text: str, res: LoadResult) -> None:
    """Plain text: one row per non-blank line (the convention of datasets' "text" builder)."""
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if len(line) > MAX_LINE_CHARS:
            res.problem(lineno, "text", f"line is {len(line):,} characters long (limit {MAX_LINE_CHARS:,})")
            continue
        res.add({"text": line}, lineno)


def _add_dataset_rows(ds, res: LoadResult) -> None:
    for i, rec in enumerate(ds, 1):
        res.add(dict(rec), i)
    if not res.records:
        res.problem(None, None, "the dataset holds no rows")


def _read_parquet(p: Path, res: LoadResult) -> LoadResult:
    import datasets

    try:
        ds = datasets.Dataset.from_parquet(str(p), keep_in_memory=True)
    except Exception as e:  # pyarrow raises several types for a damaged file
        res.problem(None, None, f"not a readable Parquet file ({_first_line(e)})")
        return res
    _add_dataset_rows(ds, res)
    return res


def _read_folder(p: Path) -> LoadResult:
    res = LoadResult(str(p))
    if not ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
        files = sorted(x.name for x in p.iterdir())[:5]
        res.problem(None, None, "this folder is not a dataset saved by datasets.save_to_disk (no state.json or "
                                f"dataset_dict.json; it holds {', '.join(files) or 'nothing'}); "
                                "give a data file instead")
        return res
    import datasets

    try:
        ds = datasets.load_from_disk(str(p), keep_in_memory=True)
    except Exception as e:
        res.problem(None, None, f"cannot load the saved dataset ({_first_line(e)})")
        return res
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds), None)
        if split is None:
            res.problem(None, None, "the saved DatasetDict has no splits")
            return res
        ds = ds[split]
    _add_dataset_rows(ds, res)
    return res


def _read_hub(name: str) -> LoadResult:
    res = LoadResult(name)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false"):
        res.problem(None, None, "no such file, and hub datasets cannot be fetched offline "
                                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)")
        return res
    import datasets

    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:
        res.problem(None, None, f"no such file, and the hub dataset could not be loaded ({_first_line(e)})")
        return res
    _add_dataset_rows(ds, res)
    return res


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def load_records(path: str, *, fmt_hint: str | None = None) -> list[dict]:
    """All rows of a dataset as dicts; raises DataError listing every bad row (warnings do not raise)."""
    res = read_source(path, fmt_hint=fmt_hint)
    if res.errors:
        raise DataError(res.path, problems=res.errors)
    return res.records
