"""Validated rows → token ids with loss masks, split into train/validation (``prepare_data``).

Nothing is lost: every bad row becomes a DataProblem(path, row, field, reason); ``prepare_data`` raises one
DataError holding all of them (``check.check_data`` returns them instead). Nothing is silent either: rows
skipped because truncation left no trained token and rows cut at seq_len are counted (``PreparedData.skipped``,
``.truncated``, ``.warnings``), and it is an error when no training row survives, or when evaluation was asked
for (val_fraction > 0) and the validation split comes out empty.
"""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ftstudio.core.errors import DataError, DataProblem
from ftstudio.engine.data.collate import Collator, pack, pad_id_of
from ftstudio.engine.data.formats import Validator, detect_format, misspelt_classes, resolve_columns, sort_labels
from ftstudio.engine.data.load import demo_dataset_path, read_source
from ftstudio.engine.data.preference import PairCollator, PreferenceValidator, encode_pairs, pair_examples
from ftstudio.engine.data.render import (Encoded, TemplateError, TemplateTimeout, encode_causal,
                                         encode_classification_batch)
from ftstudio.engine.data.special_text import special_text
from ftstudio.engine.data.table import table_roles


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
    label_counts: dict[str, int] | None = None  # rows per class, both splits (check-data shows the balance)
    columns: dict[str, str] | None = None  # a table's roles found by table.py: text, label, found_by
    skipped: int = 0  # rows dropped because truncation left no trained token (both splits)
    truncated: int = 0  # rows cut at seq_len (both splits)


MAX_ROW_WARNINGS = 20  # skipped rows named one by one; past this, one line counts the rest


def _validate(res, fmt: str, text_col: str, label_col: str, problems: list[DataProblem]) -> _Part:
    v = validator_for(fmt, res.path, text_col, label_col)
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


def validator_for(fmt: str, path: str, text_col: str = "text", label_col: str = "label") -> Validator:
    return PreferenceValidator(path) if fmt == "preference" else Validator(fmt, path, text_col, label_col)


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
    if frac > 0 and not val_idx:  # small classes all rounded to zero: one row of the largest class that can spare it
        spare = [key for key in sorted(groups, key=str) if len(groups[key]) > 1]
        if spare:
            val_idx.append(groups[max(spare, key=lambda key: len(groups[key]))][0])
    chosen = set(val_idx)
    train_idx = [i for i in range(len(part.norms)) if i not in chosen]
    rng.shuffle(train_idx)
    val_idx.sort()

    def take(ix):
        return _Part(part.path, [part.norms[i] for i in ix], [part.rows[i] for i in ix])
    return take(train_idx), take(val_idx)


def _unused_columns(res, fmt: str, cfg) -> list[DataProblem]:
    """--text-column / --label-column named for rows whose format reads other fields: a name the file lacks is an
    error (a typo must not pass unseen), one it has is a warning that the column is not read."""
    if fmt in ("text", "classification") or not res.records:
        return []
    out = []
    columns = sorted({k for r in res.records[:50] for k in r}, key=str)
    for flag, name in (("--text-column", cfg.text_column), ("--label-column", cfg.label_column)):
        if not name:
            continue
        if not any(name in r for r in res.records):
            out.append(DataProblem(res.path, None, name, f"{flag} {name}: no such column (the columns are "
                                   f"{', '.join(map(str, columns))}); {fmt!r} rows do not use {flag}, leave it out"))
        else:
            out.append(DataProblem(res.path, None, name, f"{flag} {name}: not read; {fmt!r} rows use their own "
                                   "fields (pick --format text or classification to train on this column)", "warning"))
    return out


def build_rows(cfg, task: str | None, seed: int, label_order: list[str] | None = None) -> _Built:
    problems: list[DataProblem] = []
    res = read_source(source_path(cfg.dataset))
    problems += res.problems
    roles = table_roles(res.records, cfg)    # a table whose column names formats.py does not know (table.py)
    if roles is not None:
        cfg = dataclasses.replace(cfg, text_column=roles.text, label_column=roles.label)
        problems.append(DataProblem(res.path, None, None, roles.line(), "info"))
    fmt = detect_format(res.records, cfg)
    problems += _unused_columns(res, fmt, cfg)
    text_col, label_col = resolve_columns(res.records, cfg)
    if fmt in ("text", "classification") and res.records and not any(text_col in r for r in res.records):
        # One line for the file, not one per row: the column is simply not there.
        columns = ", ".join(sorted({k for r in res.records[:50] for k in r}, key=str)) or "none (empty objects)"
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
        _check_split(train, val, cfg.val_fraction, by_label, label_col, problems)
    built = _Built(fmt, task, train, val, problems)
    built.columns = {"text": roles.text, "label": roles.label, "found_by": roles.how} if roles else None
    if by_label:
        names = sort_labels(n["label"] for n in train.norms)
        # Each class keeps the id the model's head knows it by, else the id the dataset's ClassLabel gives it.
        for order in (label_order, res.class_names.get(label_col)):
            if order and set(order) == set(names):
                names = list(order)
                break
        built.label_names = names
        if train.norms and len(names) < 2:
            problems.append(DataProblem(train.path, None, label_col, f"only one class ({names[0]!r}); a "
                                        "classifier needs at least two labels"))
        built.label_counts = class_balance(train, val, label_col, problems)
        known = set(names)
        for norm, row in zip(val.norms, val.rows):
            if norm["label"] not in known:
                problems.append(DataProblem(val.path, row, label_col, f"label {norm['label']!r} does not occur in "
                                            f"the training data (labels: {', '.join(names[:20])})"))
    return built


IMBALANCE = 3.0   # the largest class this many times the smallest: accuracy alone says little


def class_balance(train: _Part, val: _Part, label_col: str, problems: list[DataProblem]) -> dict[str, int]:
    """Rows per class (both splits, most frequent first), with a warning when the classes are imbalanced: a
    classifier that always answers the majority class then scores its share as accuracy."""
    counts = dict(Counter(str(n["label"]) for n in train.norms + val.norms).most_common())
    total = sum(counts.values())
    if len(counts) > 1 and max(counts.values()) >= IMBALANCE * min(counts.values()):
        top = next(iter(counts))
        shares = ", ".join(f"{name} {n:,} ({n / total:.1%})" for name, n in list(counts.items())[:6])
        problems.append(DataProblem(train.path, None, label_col, f"classes are imbalanced: {shares}; always "
                                    f"answering {top!r} scores {counts[top] / total:.1%} accuracy, so judge a "
                                    "classifier by macro-F1 and per-class recall (the evaluation reports both "
                                    "beside that majority-class baseline)", "warning"))
    for rare, common in misspelt_classes(counts):
        path, row = next(((part.path, r) for part in (train, val) for n, r in zip(part.norms, part.rows)
                          if str(n["label"]) == rare), (train.path, None))
        problems.append(DataProblem(path, row, label_col, f"label {rare!r} ({counts[rare]} row"
                                    f"{'s' if counts[rare] > 1 else ''}) looks like a misspelling of {common!r} "
                                    f"({counts[common]:,} rows); correct it if so, or it trains as a class of "
                                    "its own", "warning"))
    return counts


def _check_split(train: _Part, val: _Part, frac: float, by_label: bool, label_col: str,
                 problems: list[DataProblem]) -> None:
    """An empty validation split is an error when evaluation was asked for; classes too small to be evaluated
    are said in one warning."""
    if frac <= 0 or not train.norms:
        return
    if not val.norms and not any(p.severity == "error" for p in problems):  # else the bad rows explain it
        n = len(train.norms)
        why = " (each class keeps its rows for training)" if by_label else ""
        problems.append(DataProblem(train.path, None, None, f"the validation split is empty: {n} usable row"
                                    f"{'s' if n != 1 else ''} with val_fraction {frac:g} leave none to evaluate "
                                    f"on{why}; use --val-fraction 0 to train without evaluation, a larger "
                                    "--val-fraction, or a separate --val-dataset"))
    elif by_label:
        counts = Counter(n["label"] for n in train.norms + val.norms)
        alone = sorted((name for name, k in counts.items() if k == 1), key=str)
        if alone:
            rows = {n["label"]: r for n, r in zip(train.norms, train.rows)}
            shown = ", ".join(f"{a!r} (row {rows[a]})" for a in alone[:10]) + \
                (f" and {len(alone) - 10} more" if len(alone) > 10 else "")
            problems.append(DataProblem(train.path, None, label_col, f"{len(alone)} class"
                                        f"{'es have' if len(alone) > 1 else ' has'} a single row, so "
                                        f"{'they' if len(alone) > 1 else 'it'} cannot be in "
                                        f"the validation split: {shown}; trained on, never evaluated", "warning"))


def encode_rows(built: _Built, part: _Part, tokenizer, seq_len: int,
                instruction_format: str = "auto") -> list[tuple[int, Encoded]]:
    """(row, Encoded) for each usable row; template refusals and rows with nothing to train become problems,
    and ``built.skipped`` / ``built.truncated`` count the rows dropped and cut."""
    out: list[tuple[int, Encoded]] = []
    if not part.norms:
        return out
    if built.task == "classification":
        encs = encode_classification_batch([n["text"] for n in part.norms], tokenizer, seq_len)
        built.truncated += sum(e.truncated for e in encs)
        return list(zip(part.rows, encs))
    injected = special_text(part.path, part.norms, part.rows, tokenizer)
    if injected is not None:
        built.problems.append(injected)
    skipped, rewritten = [], {}
    for norm, row in zip(part.norms, part.rows):
        try:
            enc = encode_causal(norm, tokenizer, seq_len, instruction_format)
        except TemplateError as e:
            built.problems.append(DataProblem(part.path, row, "messages", str(e)))
            if isinstance(e, TemplateTimeout):
                break   # every row would wait as long: the run fails on this one problem
            continue
        if enc.trainable == 0:
            skipped.append(row)
            if len(skipped) <= MAX_ROW_WARNINGS:
                built.problems.append(DataProblem(part.path, row, None, f"no trained tokens left within seq_len="
                                                  f"{seq_len} (the prompt alone is {enc.full_length} tokens or "
                                                  "more); row skipped", "warning"))
            continue
        built.truncated += enc.truncated
        out.append((row, enc))
        for kind in ("dropped", "reasoning_dropped"):
            for turn in getattr(enc.notes, kind, None) or []:
                rewritten.setdefault(kind, []).append((row, turn))
    _say_rewritten(part.path, rewritten, built.problems)
    built.skipped += len(skipped)
    if len(skipped) > MAX_ROW_WARNINGS:
        built.problems.append(DataProblem(part.path, None, None, f"{len(skipped)} of {len(part.norms)} rows in all "
                                          f"were skipped (no trained token within seq_len={seq_len}); raise "
                                          "--seq-len or shorten the prompts", "warning"))
    return out


_REWRITTEN = {
    "dropped": "the chat template renders nothing of {n} assistant turn{s} ({where}): not trained, nothing "
               "else trained in {their} place",
    "reasoning_dropped": "the chat template does not render the reasoning of {n} assistant turn{s} ({where}; "
                         "Qwen3-style templates keep it only after the last user message, DeepSeek-R1's never): "
                         "trained on the answer without it",
}


def _say_rewritten(path: str, rewritten: dict, problems: list[DataProblem]) -> None:
    """One counted warning per kind of turn the template dropped or rewrote (nothing changed unsaid)."""
    for kind, turns in rewritten.items():
        turns, rows = sorted(turns), sorted({r for r, _ in turns})
        where = ", ".join(f"row {r} turn {t}" for r, t in turns[:3]) + (f", … in {len(rows)} rows" if
                                                                          len(turns) > 3 else "")
        problems.append(DataProblem(path, None, "messages", _REWRITTEN[kind].format(
            n=len(turns), s="" if len(turns) == 1 else "s", where=where, their="its" if len(turns) == 1 else
            "their"), "warning"))


@dataclass
class PreparedData:
    train: list[dict]
    val: list[dict]
    format: str
    task: str
    label_names: list[str] | None
    collate: Callable[[list[dict]], dict]
    skipped: int = 0  # rows dropped: truncation at seq_len left them no trained token
    truncated: int = 0  # rows cut at seq_len
    warnings: list[DataProblem] = field(default_factory=list)  # what a run should show before it starts
    rows: tuple[int, int] | None = None   # (train, validation) rows as tokenised, before any packing joined them

    def summary(self) -> str:
        """One line for a run's log: rows used (and the sequences packing made of them), what seq_len dropped
        and cut."""
        packed = getattr(self.collate, "packed", False) and self.rows is not None
        made = (f"{len(self.train)} train / {len(self.val)} validation sequences of seq_len packed from "
                f"{self.rows[0]} / {self.rows[1]} rows" if packed else
                f"{len(self.train)} train / {len(self.val)} validation examples")
        return (f"{made}; {self.skipped} rows skipped (no trained token within seq_len), {self.truncated} rows cut "
                "at seq_len")


def _examples(built: _Built, part: _Part, encs: list[tuple[int, Encoded]]) -> list[dict]:
    if built.task == "classification":
        ids = {name: i for i, name in enumerate(built.label_names or [])}
        label_of = {r: n["label"] for n, r in zip(part.norms, part.rows)}
        return [{"input_ids": e.input_ids, "label": ids[label_of[r]]} for r, e in encs]
    return [{"input_ids": e.input_ids, "labels": e.labels} for _, e in encs]


def prepare_data(cfg, tokenizer, *, task: str, seed: int, label_order: list[str] | None = None) -> PreparedData:
    """Load, validate, split and tokenise; raise DataError listing every problem if any is an error.
    ``label_order``: the class names of the model's classification head in id order (``models.head_labels``);
    where the data has exactly these classes they keep those ids, else classes are numbered in sorted order."""
    built = build_rows(cfg, task, seed, label_order)
    _raise_errors(built.problems)
    pairs = built.format == "preference"  # both answers of each pair (data/preference.py)
    encode = encode_pairs if pairs else encode_rows
    train_enc = encode(built, built.train, tokenizer, cfg.seq_len, cfg.instruction_format)
    val_enc = encode(built, built.val, tokenizer, cfg.seq_len, cfg.instruction_format)
    check_survivors(built, train_enc, val_enc, cfg.seq_len)
    _raise_errors(built.problems)
    if not train_enc:
        raise DataError(built.train.path, None, None, "no training rows left after tokenisation")
    if pairs:
        return PreparedData(pair_examples(train_enc), pair_examples(val_enc), built.format, built.task, None,
                            PairCollator(pad_id_of(tokenizer)), built.skipped, built.truncated,
                            [p for p in built.problems if p.severity != "error"])
    train, val = _examples(built, built.train, train_enc), _examples(built, built.val, val_enc)
    packed = bool(cfg.packing) and built.task == "causal-lm"
    rows = (len(train), len(val))
    if packed:
        train, val = pack(train, cfg.seq_len), pack(val, cfg.seq_len)
    return PreparedData(train, val, built.format, built.task, built.label_names,
                        Collator(pad_id_of(tokenizer), built.task, packed), built.skipped, built.truncated,
                        [p for p in built.problems if p.severity != "error"], rows)


def check_survivors(built: _Built, train_enc: list, val_enc: list, seq_len: int) -> None:
    """No training row left, or a validation split emptied by tokenisation, is an error (not a silent run)."""
    if any(p.severity == "error" for p in built.problems):
        return  # template refusals and the like: rows the user must fix first
    fix = f"raise --seq-len (now {seq_len}) or shorten the prompts"
    def all_of(n: int) -> str:
        return "its only row was" if n == 1 else f"all {n} rows were"
    if built.train.norms and not train_enc:
        built.problems.append(DataProblem(built.train.path, None, None, f"no training row left: "
                                          f"{all_of(len(built.train.norms))} skipped (no trained token within "
                                          f"seq_len={seq_len}); {fix}"))
    if built.val.norms and not val_enc:
        built.problems.append(DataProblem(built.val.path, None, None, f"the validation split is empty after "
                                          f"tokenisation: {all_of(len(built.val.norms))} skipped (no trained "
                                          f"token within seq_len={seq_len}); {fix}, or use --val-fraction 0"))


def _raise_errors(problems: list[DataProblem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DataError(errors[0].path, problems=errors)


