"""Reading dataset files into plain row dicts, reporting every bad row (file, row, field, reason).

Line-oriented files (JSONL, JSON, CSV, TSV, .txt) are read here with the standard library rather than
`datasets`' builders: those stop at the first bad line with an Arrow error that names neither the line
nor the field, and they coerce CSV cells to numbers. Reading them ourselves lets us report *every*
problem with its 1-based line. Columnar sources (Parquet through pyarrow; `save_to_disk` folders and hub ids
through `datasets`) have typed rows already; their row numbers are 1-based row indices.

What the well-kept readers accept, we accept: CSV/TSV separators, quoting and headers as ``delimited.py``
explains; JSON as an array of rows, ``{"data": [...]}``, ``{"train": [...], "test": [...]}`` (the train split)
or a dict of columns (``{"text": [...], "label": [...]}``); JSON Lines written as one array; any of them
compressed (``.gz``, ``.bz2``, ``.xz`` through the standard library, ``.zst`` when ``zstandard`` is installed;
compressed bytes are recognised by their magic number whatever the name). What is truly broken (invalid JSON,
lone surrogates, nesting too deep to read, a ragged row) is named by row and field.

Policy on a UTF-8 byte-order mark: accepted (stripped) with a warning, because Excel and Notepad write one
and the text is still valid UTF-8.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftstudio.core.errors import DataError, DataProblem
from ftstudio.engine.data.delimited import read_delimited
from ftstudio.engine.resources import demo_dataset_path, resources_dir  # noqa: F401 (the data room's face)
from ftstudio.engine.data.json_rows import read_json, read_jsonl

MAX_LINE_CHARS = 1_000_000  # one row longer than this is almost certainly a broken file, not a sample
MAX_PROBLEMS = 1000  # stop collecting past this: the user has enough to fix, and memory stays bounded
SNIFF_BYTES = 8192

MAX_DECOMPRESSED = 4 << 30  # a compressed file that expands past this is refused rather than filling the RAM

TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv",
                 ".tab": "tsv", ".txt": "txt", ".text": "txt", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSED_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))


@dataclass
class LoadResult:
    """Rows read from one source. ``rows[i]`` is the 1-based line/row number of ``records[i]``."""

    path: str
    records: list[dict] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)
    class_names: dict[str, list[str]] = field(default_factory=dict)  # a ClassLabel column's names, in id order

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
    if not p.is_file():   # reading a pipe or a device would wait forever or never end
        res = LoadResult(str(p))
        res.problem(None, None, f"this is {_special_kind(p)}, not a regular file; give a data file (copy the "
                                "stream into one first)")
        return res
    suffixes = [x.lower() for x in p.suffixes[-2:]]
    named_compression = COMPRESSED_SUFFIXES.get(suffixes[-1]) if suffixes else None
    inner = (suffixes[-2] if len(suffixes) > 1 else "") if named_compression else (suffixes[-1] if suffixes else "")
    kind = fmt_hint or TEXT_SUFFIXES.get(inner)
    res = LoadResult(str(p))
    if kind is None and not suffixes:
        kind = "sniff"  # no extension at all (the SMS spam collection's "SMSSpamCollection"): decided by content
    if kind is None:
        what = f"{inner or '(no extension)'} inside {suffixes[-1]}" if named_compression else \
            (p.suffix or "(no extension)")
        res.problem(None, None, f"unsupported file type {what!r}; use .jsonl, .json, .csv, .tsv, .txt or .parquet "
                                "(optionally compressed: .jsonl.gz, .csv.bz2, .tsv.xz, .json.zst) or a folder "
                                "saved by datasets")
        return res
    if kind == "parquet" and not named_compression:
        return _read_parquet(p, res)
    try:
        data = p.read_bytes()
    except OSError as e:
        res.problem(None, None, f"cannot read the file: {e.strerror or e}")
        return res
    data = _decompressed(data, named_compression, res)
    if data is None:
        return res
    if kind == "parquet":
        res.problem(None, None, "a compressed Parquet file: Parquet compresses itself; decompress the file first")
        return res
    text = _decode(data, res)
    if text is None:
        return res
    if kind == "sniff":
        kind = _kind_from_content(text)
        res.problem(None, None, f"the file has no extension; read as {kind.upper()} from its content", "warning")
    if kind == "jsonl":
        read_jsonl(text, res, MAX_LINE_CHARS)
    elif kind == "json":
        read_json(text, res, MAX_LINE_CHARS)
    elif kind in ("csv", "tsv"):
        read_delimited(text, res, "\t" if kind == "tsv" else ",", MAX_LINE_CHARS)
    else:
        _read_txt(text, res)
    if not res.records and not res.errors:
        res.problem(None, None, "the file holds no rows")
    return res


def _special_kind(p: Path) -> str:
    import stat
    mode = p.stat().st_mode
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _kind_from_content(text: str) -> str:
    head = text.lstrip()[:1]
    if head in ("{", "["):
        return "jsonl" if head == "{" else "json"
    lines = [ln for ln in text[:65536].splitlines()[:200] if ln.strip()]
    for sep, kind in (("\t", "tsv"), (",", "csv"), (";", "csv"), ("|", "csv")):
        if lines and sum(sep in ln for ln in lines) >= 0.9 * len(lines):
            return kind
    return "txt"


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    suffix = Path(s).suffix.lower()
    return (len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))
            and suffix not in TEXT_SUFFIXES and suffix not in COMPRESSED_SUFFIXES)


def _decompressed(data: bytes, named: str | None, res: LoadResult) -> bytes | None:
    """The file's bytes, decompressed when they are gzip/bz2/xz/zstd (by magic number, whatever the name)."""
    how = next((kind for magic, kind in _MAGIC if data.startswith(magic)), None)
    if how is None:
        if named and data.strip():
            res.problem(None, None, f"the name says {named}-compressed but the bytes are not; read as plain text",
                        "warning")
        return data
    if how == "zstd":
        try:
            import zstandard
        except ImportError:
            res.problem(None, None, "the file is zstd-compressed (.zst) and reading it needs the zstandard package, "
                                    "which is not installed: pip install zstandard (or decompress it: zstd -d FILE)")
            return None
        opener = lambda f: zstandard.ZstdDecompressor().stream_reader(f)  # noqa: E731
    else:
        opener = {"gzip": lambda f: gzip.GzipFile(fileobj=f), "bz2": bz2.BZ2File, "xz": lzma.LZMAFile}[how]
    try:
        with opener(io.BytesIO(data)) as fh:
            out = fh.read(MAX_DECOMPRESSED + 1)
    except Exception as e:  # noqa: BLE001 - each library raises its own types (OSError, EOFError, LZMAError...)
        res.problem(None, None, f"not a readable {how} file ({_first_line(e)}); is the download incomplete?")
        return None
    if len(out) > MAX_DECOMPRESSED:
        res.problem(None, None, f"the file decompresses to more than {MAX_DECOMPRESSED >> 30} GiB; split it")
        return None
    if not named:
        res.problem(None, None, f"the file is {how}-compressed though its name does not say so; read decompressed",
                    "warning")
    return out


def _decode(data: bytes, res: LoadResult) -> str | None:
    """Bytes → text, with a clear message for empty, binary, UTF-16 and non-UTF-8 files."""
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
        res.problem(None, None, "this is a binary file (it contains NUL bytes), not text; give a .jsonl, .json, "
                                ".csv, .tsv, .txt or .parquet file")
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
    features = getattr(ds, "features", None) or {}
    names = {col: list(f.names) for col, f in features.items() if type(f).__name__ == "ClassLabel"}
    for i, rec in enumerate(ds, 1):
        res.add(dict(rec), i)
    if not res.records:
        res.problem(None, None, "the dataset holds no rows")
    _name_class_ids(res, names)


def _name_class_ids(res: LoadResult, names: dict[str, list[str]]) -> None:
    """Class ids of a datasets ClassLabel column (saved folders, the hub, and the features a Parquet file
    written by datasets keeps) read as the class names they stand for: the classes, the evaluation and the
    exported id2label say "neg"/"pos", not "0"/"1". -1 (datasets' "no label") is left as it is."""
    for col, classes in names.items():
        if not classes:
            continue
        res.class_names[col] = list(classes)
        for rec in res.records:
            v = rec.get(col)
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(classes):
                rec[col] = classes[v]
        shown = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
        res.problem(None, col, f"column {col!r} holds class ids; read as the dataset's class names ({shown})",
                    "info")


def _parquet_class_names(schema) -> dict[str, list[str]]:
    """{column: class names} of ClassLabel columns in the features datasets writes into a Parquet file."""
    import json

    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return {col: [str(n) for n in f["names"]] for col, f in features.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}


def _read_parquet(p: Path, res: LoadResult) -> LoadResult:
    """Parquet through pyarrow (what datasets' parquet builder uses underneath, without its error logging)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(p))
    except Exception as e:  # pyarrow raises several types for a damaged file
        res.problem(None, None, f"not a readable Parquet file ({_first_line(e)})")
        return res
    for i, rec in enumerate(table.to_pylist(), 1):
        res.add(rec, i)
    if not res.records:
        res.problem(None, None, "the dataset holds no rows")
    _name_class_ids(res, _parquet_class_names(table.schema))
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
        others = [k for k in ds if k != split]
        if others:   # said as for a JSON file of splits: nothing dropped unsaid
            res.problem(None, None, f"the saved DatasetDict holds the splits {', '.join([split] + others)}: {split!r} "
                                    f"was read, {', '.join(map(repr, others))} not (to evaluate on one, give its "
                                    f"folder as --val-dataset, e.g. {p / others[0]})", "warning")
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
