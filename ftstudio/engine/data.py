"""Datasets → validated rows → token ids with loss masks, split into train/validation.

The public face of the data layer (see CONTRACT.md). Reading files lives in data_load.py, formats and row
validation in data_formats.py, tokenisation/packing/collation in data_tokenize.py.

Nothing is lost: every bad row becomes a DataProblem(path, row, field, reason); ``prepare_data`` raises one
DataError holding all of them, ``check_data`` returns them in a DataReport and never raises for bad data.
"""
from __future__ import annotations

import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftstudio.core.errors import DataError, DataProblem
from ftstudio.engine.data_formats import Validator, detect_format, resolve_columns, sort_labels
from ftstudio.engine.data_load import load_records, read_source
from ftstudio.engine.data_tokenize import (
    IGNORE, Collator, Encoded, TemplateError, encode_causal, encode_classification_batch, pack, pad_id_of,
)

__all__ = ["resources_dir", "demo_dataset_path", "load_records", "detect_format", "DataReport", "check_data",
           "PreparedData", "prepare_data", "render_example"]


def resources_dir() -> Path:
    """The repository's resources/ folder: next to the package (source tree, editable install), else in a
    PyInstaller bundle (sys._MEIPASS/resources)."""
    here = Path(__file__).resolve().parents[2] / "resources"
    if here.is_dir():
        return here
    meipass = getattr(sys, "_MEIPASS", None)
    if meipass and (Path(meipass) / "resources").is_dir():
        return Path(meipass) / "resources"
    return here


def demo_dataset_path() -> Path:
    """The bundled demo classification data (legal clauses, 8 classes; CC0, written by this project)."""
    return resources_dir() / "demo" / "legal_clauses.jsonl"


def _source(name: str) -> str:
    return str(demo_dataset_path()) if name == "demo" else name


@dataclass
class _Part:
    """The validated rows of one source."""

    path: str
    norms: list[dict] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)


@dataclass
class _Built:
    format: str
    task: str
    train: _Part
    val: _Part
    problems: list[DataProblem]
    label_names: list[str] | None = None


def _validate(res, fmt: str, text_col: str, label_col: str, problems: list[DataProblem]) -> _Part:
    v = Validator(fmt, res.path, text_col, label_col)
    part = _Part(res.path)
    for rec, row in zip(res.records, res.rows):
        norm = v.check(rec, row)
        if norm is not None:
            part.norms.append(norm)
            part.rows.append(row)
    problems += v.problems
    if res.records and not part.norms and not any(p.severity == "error" for p in v.problems):
        problems.append(DataProblem(res.path, None, None, f"no usable {fmt} rows"))
    return part


def _split(part: _Part, frac: float, seed: int, by_label: bool) -> tuple[_Part, _Part]:
    """Seeded split; for classification, stratified per label so each class appears in training."""
    groups: dict = {}
    for i, norm in enumerate(part.norms):
        groups.setdefault(norm["label"] if by_label else None, []).append(i)
    rng = random.Random(seed)
    val_idx: list[int] = []
    for key in sorted(groups, key=str):
        idx = groups[key]
        rng.shuffle(idx)
        k = round(len(idx) * frac)
        if frac > 0 and k == 0 and not by_label and len(idx) > 1:
            k = 1
        val_idx += idx[: min(k, len(idx) - 1)]
    chosen = set(val_idx)
    train_idx = [i for i in range(len(part.norms)) if i not in chosen]
    rng.shuffle(train_idx)
    val_idx.sort()

    def take(ix):
        return _Part(part.path, [part.norms[i] for i in ix], [part.rows[i] for i in ix])
    return take(train_idx), take(val_idx)


def _build(cfg, task: str | None, seed: int) -> _Built:
    problems: list[DataProblem] = []
    res = read_source(_source(cfg.dataset))
    problems += res.problems
    fmt = detect_format(res.records, cfg)
    text_col, label_col = resolve_columns(res.records, cfg)
    if fmt in ("text", "classification") and res.records and not any(text_col in r for r in res.records):
        # One line for the file, not one per row: the column is simply not there.
        columns = ", ".join(sorted({k for r in res.records[:50] for k in r}, key=str))
        problems.append(DataProblem(res.path, None, text_col, f"no text column {text_col!r}; the columns are "
                                    f"{columns}. Name them with --text-column (and --label-column for labels), "
                                    "or pick a format with --format"))
        res.records, res.rows = [], []
    elif fmt == "classification" and res.records and not any(label_col in r for r in res.records):
        problems.append(DataProblem(res.path, None, label_col, f"label column {label_col!r} is missing; columns "
                                    f"are {', '.join(sorted({k for r in res.records[:50] for k in r}))}"))
        res.records, res.rows = [], []
    train = _validate(res, fmt, text_col, label_col, problems)
    if cfg.max_rows:
        train = _Part(train.path, train.norms[: cfg.max_rows], train.rows[: cfg.max_rows])
    task = task if task not in (None, "auto") else ("classification" if fmt == "classification" else "causal-lm")
    if task == "classification" and fmt != "classification":
        problems.append(DataProblem(train.path, None, label_col, f"classification needs a text column and a label "
                                    f"column, but the data is {fmt!r}"))
    if task == "causal-lm" and fmt == "classification":
        problems.append(DataProblem(train.path, None, label_col, "this is classification data (text + label); "
                                    "use a classification model or task, or format 'text' to train on the text"))
    by_label = fmt == "classification"
    if cfg.val_dataset:
        vres = read_source(_source(cfg.val_dataset))
        problems += vres.problems
        val = _validate(vres, fmt, text_col, label_col, problems)
    else:
        train, val = _split(train, cfg.val_fraction, seed, by_label)
    built = _Built(fmt, task, train, val, problems)
    if by_label:
        names = sort_labels(n["label"] for n in train.norms)
        built.label_names = names
        if train.norms and len(names) < 2:
            problems.append(DataProblem(train.path, None, label_col, f"only one class ({names[0]!r}); a "
                                        "classifier needs at least two labels"))
        known = set(names)
        for norm, row in zip(val.norms, val.rows):
            if norm["label"] not in known:
                problems.append(DataProblem(val.path, row, label_col, f"label {norm['label']!r} does not occur in "
                                            f"the training data (labels: {', '.join(names[:20])})"))
    return built


def _encode(built: _Built, part: _Part, tokenizer, seq_len: int) -> list[tuple[int, Encoded]]:
    """(row, Encoded) for each usable row; template refusals and rows with nothing to train become problems."""
    out: list[tuple[int, Encoded]] = []
    if built.task == "classification":
        encs = encode_classification_batch([n["text"] for n in part.norms], tokenizer, seq_len)
        return list(zip(part.rows, encs))
    for norm, row in zip(part.norms, part.rows):
        try:
            enc = encode_causal(norm, tokenizer, seq_len)
        except TemplateError as e:
            built.problems.append(DataProblem(part.path, row, "messages", str(e)))
            continue
        if enc.trainable == 0:
            built.problems.append(DataProblem(part.path, row, None, f"no trained tokens left within seq_len="
                                              f"{seq_len} (the prompt alone is {enc.full_length} tokens or more); "
                                              "row skipped", "warning"))
            continue
        out.append((row, enc))
    return out


@dataclass
class PreparedData:
    train: list[dict]
    val: list[dict]
    format: str
    task: str
    label_names: list[str] | None
    collate: Callable[[list[dict]], dict]


def _examples(built: _Built, part: _Part, encs: list[tuple[int, Encoded]]) -> list[dict]:
    if built.task == "classification":
        ids = {name: i for i, name in enumerate(built.label_names or [])}
        label_of = {r: n["label"] for n, r in zip(part.norms, part.rows)}
        return [{"input_ids": e.input_ids, "label": ids[label_of[r]]} for r, e in encs]
    return [{"input_ids": e.input_ids, "labels": e.labels} for _, e in encs]


def prepare_data(cfg, tokenizer, *, task: str, seed: int) -> PreparedData:
    """Load, validate, split and tokenise; raise DataError listing every problem if any is an error."""
    built = _build(cfg, task, seed)
    _raise_errors(built.problems)
    train_enc = _encode(built, built.train, tokenizer, cfg.seq_len)
    val_enc = _encode(built, built.val, tokenizer, cfg.seq_len)
    _raise_errors(built.problems)
    if not train_enc:
        raise DataError(built.train.path, None, None, "no training rows left after tokenisation")
    train, val = _examples(built, built.train, train_enc), _examples(built, built.val, val_enc)
    packed = bool(cfg.packing) and built.task == "causal-lm"
    if packed:
        train, val = pack(train, cfg.seq_len), pack(val, cfg.seq_len)
    return PreparedData(train, val, built.format, built.task, built.label_names,
                        Collator(pad_id_of(tokenizer), built.task, packed))


def _raise_errors(problems: list[DataProblem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(errors[0].path, problems=errors)


@dataclass
class DataReport:
    """What check-data prints: the format, counts, token totals, length statistics and every problem."""

    path: str
    format: str | None
    task: str | None
    rows: int
    train_rows: int
    val_rows: int
    tokens: int | None  # after truncation; None without a tokenizer
    trainable_tokens: int | None  # tokens under the loss (classification: every input token)
    lengths: list[int]  # tokens per row before truncation
    truncated: int
    labels: list[str] | None
    problems: list[DataProblem]

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def length_stats(self) -> dict | None:
        if not self.lengths:
            return None
        s = sorted(self.lengths)

        def pct(q: float) -> int:
            return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
        return {"min": s[0], "mean": round(statistics.fmean(s), 2), "p50": pct(0.5), "p95": pct(0.95),
                "max": s[-1]}

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "task": self.task, "rows": self.rows,
                "train_rows": self.train_rows, "val_rows": self.val_rows, "tokens": self.tokens,
                "trainable_tokens": self.trainable_tokens, "truncated": self.truncated,
                "lengths": self.length_stats(), "labels": self.labels, "ok": self.ok,
                "errors": [p.to_dict() for p in self.errors],
                "warnings": [p.to_dict() for p in self.problems if p.severity != "error"]}


def _load_tokenizer(tokenizer):
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import AutoTokenizer

    from ftstudio.core.errors import ModelError

    if str(tokenizer) == "demo":
        from ftstudio.engine.models import demo_model_path
        tokenizer = demo_model_path()
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except Exception as e:  # a missing folder, no tokenizer files, offline hub id...
        raise ModelError(f"cannot load a tokenizer from {tokenizer}: {str(e).splitlines()[0][:300]}") from e


def check_data(cfg, tokenizer=None, *, task: str | None = None, seed: int = 42) -> DataReport:
    """Validate (and, with a tokenizer or a model folder/"demo", tokenise) a dataset; never raises for bad data."""
    try:
        built = _build(cfg, task, seed)
    except DataError as e:  # defensive: the builders collect rather than raise
        return DataReport(_source(cfg.dataset), None, task, 0, 0, 0, None, None, [], 0, None, e.problems)
    tokens = trainable = None
    lengths: list[int] = []
    truncated = 0
    if tokenizer is not None and built.train.norms:
        tok = _load_tokenizer(tokenizer)
        encs = [e for part in (built.train, built.val) for _, e in _encode(built, part, tok, cfg.seq_len)]
        lengths = [e.full_length for e in encs]
        tokens = sum(len(e.input_ids) for e in encs)
        trainable = tokens if built.task == "classification" else sum(e.trainable for e in encs)
        truncated = sum(e.truncated for e in encs)
    return DataReport(built.train.path, built.format, built.task, len(built.train.norms) + len(built.val.norms),
                      len(built.train.norms), len(built.val.norms), tokens, trainable, lengths, truncated,
                      built.label_names, built.problems)


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token as the text it adds when decoding (streaming-style), so "▁the"/"Ġthe" show as " the"."""
    out, prev = [], ""
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not cur.startswith(prev):  # decoders that are not prefix-stable: fall back to the raw token
            return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
        out.append(cur[len(prev):])
        prev = cur
    return out


def render_example(record: dict, fmt: str, tokenizer, cfg, *, task: str | None = None) -> list[tuple[str, bool]]:
    """One row as (token text, under the loss) pairs for the GUI preview; raises DataError for a bad row.

    For classification no token is predicted: the tokens come back unmarked, followed by one
    ("→ <label>", True) item standing for the target.
    """
    if fmt == "auto":
        fmt = detect_format([record], cfg)
    text_col, label_col = resolve_columns([record], cfg)
    v = Validator(fmt, "<preview>", text_col, label_col)
    norm = v.check(record, 1)
    errors = [p for p in v.problems if p.severity == "error"]
    if norm is None or errors:
        raise DataError("<preview>", problems=errors or [DataProblem("<preview>", 1, None, "row not usable")])
    tokenizer = _load_tokenizer(tokenizer)
    task = task if task not in (None, "auto") else ("classification" if fmt == "classification" else "causal-lm")
    if task == "classification":
        enc = encode_classification_batch([norm["text"]], tokenizer, cfg.seq_len)[0]
        return [(t, False) for t in _token_texts(tokenizer, enc.input_ids)] + [(f" → {norm.get('label')}", True)]
    try:
        enc = encode_causal(norm, tokenizer, cfg.seq_len)
    except TemplateError as e:
        raise DataError("<preview>", 1, "messages", str(e)) from e
    return list(zip(_token_texts(tokenizer, enc.input_ids), (lab != IGNORE for lab in enc.labels)))
