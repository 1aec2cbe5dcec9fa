"""Validated rows → token ids with loss masks, split into train/validation (``prepare_data``).

Nothing is lost: every bad row becomes a DataProblem(path, row, field, reason); ``prepare_data`` raises one
DataError holding all of them (``check.check_data`` returns them instead).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ftstudio.core.errors import DataError, DataProblem
from ftstudio.engine.data.collate import Collator, pack, pad_id_of
from ftstudio.engine.data.formats import Validator, detect_format, resolve_columns, sort_labels
from ftstudio.engine.data.load import demo_dataset_path, read_source
from ftstudio.engine.data.render import Encoded, TemplateError, encode_causal, encode_classification_batch


def source_path(name: str) -> str:
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


def build_rows(cfg, task: str | None, seed: int) -> _Built:
    problems: list[DataProblem] = []
    res = read_source(source_path(cfg.dataset))
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
        vres = read_source(source_path(cfg.val_dataset))
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


def encode_rows(built: _Built, part: _Part, tokenizer, seq_len: int,
                instruction_format: str = "auto") -> list[tuple[int, Encoded]]:
    """(row, Encoded) for each usable row; template refusals and rows with nothing to train become problems."""
    out: list[tuple[int, Encoded]] = []
    if built.task == "classification":
        encs = encode_classification_batch([n["text"] for n in part.norms], tokenizer, seq_len)
        return list(zip(part.rows, encs))
    for norm, row in zip(part.norms, part.rows):
        try:
            enc = encode_causal(norm, tokenizer, seq_len, instruction_format)
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
    built = build_rows(cfg, task, seed)
    _raise_errors(built.problems)
    train_enc = encode_rows(built, built.train, tokenizer, cfg.seq_len, cfg.instruction_format)
    val_enc = encode_rows(built, built.val, tokenizer, cfg.seq_len, cfg.instruction_format)
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


