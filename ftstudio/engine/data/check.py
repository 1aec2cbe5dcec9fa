"""What ``ftstudio check-data`` and the GUI's data panel show: a DataReport with every problem at once, and
``render_example``, one row as tokens with the trained ones marked (the preview). Never raises for bad data."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ftstudio.core.errors import DataError, DataProblem
from ftstudio.engine.data.formats import detect_format, resolve_columns
from ftstudio.engine.data.preference import SIDES, encode_pair, encode_pairs
from ftstudio.engine.data.prepare import build_rows, check_survivors, encode_rows, source_path, validator_for
from ftstudio.engine.data.render import (IGNORE, TemplateError, encode_causal, encode_classification_batch,
                                         has_chat_template, uses_chat_template)


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
    rendering: str | None = None  # how rows reach the model: "chat template", "text (Alpaca prompt)", ...
    skipped: int = 0  # rows dropped because truncation at seq_len left them no trained token
    label_counts: dict[str, int] | None = None  # classification: rows per class, most frequent first
    columns: dict[str, str] | None = None  # a table's roles: {"text": column, "label": column}, how they were found

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
                "trainable_tokens": self.trainable_tokens, "truncated": self.truncated, "skipped": self.skipped,
                "lengths": self.length_stats(), "labels": self.labels, "label_counts": self.label_counts,
                "columns": self.columns, "ok": self.ok,
                "errors": [p.to_dict() for p in self.errors],
                "warnings": [p.to_dict() for p in self.problems if p.severity != "error"],
                "rendering": self.rendering}


def _load_tokenizer(tokenizer):
    if not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoTokenizer

    from ftstudio.core.errors import ModelError

    if str(tokenizer) == "demo":
        from ftstudio.engine.resources import demo_model_path
        tokenizer = demo_model_path()
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except Exception as e:  # a missing folder, no tokenizer files, offline hub id...
        raise ModelError(f"cannot load a tokenizer from {tokenizer}: {str(e).splitlines()[0][:300]}") from e


def check_data(cfg, tokenizer=None, *, task: str | None = None, seed: int = 42) -> DataReport:
    """Validate (and, with a tokenizer or a model folder/"demo", tokenise) a dataset; never raises for bad data."""
    try:
        built = build_rows(cfg, task, seed)
    except DataError as e:  # defensive: the builders collect rather than raise
        return DataReport(source_path(cfg.dataset), None, task, 0, 0, 0, None, None, [], 0, None, e.problems)
    tokens = trainable = None
    lengths: list[int] = []
    truncated = 0
    if tokenizer is not None and built.train.norms:
        tok = _load_tokenizer(tokenizer)
        encode = encode_pairs if built.format == "preference" else encode_rows
        train_enc, val_enc = (encode(built, part, tok, cfg.seq_len, cfg.instruction_format)
                              for part in (built.train, built.val))
        check_survivors(built, train_enc, val_enc, cfg.seq_len)
        encs = [e for _, e in train_enc + val_enc]
        if built.format == "preference":  # each answer is a row of its own (after the shared prompt)
            encs = [e for pair in encs for e in pair]
        lengths = [e.full_length for e in encs]
        tokens = sum(len(e.input_ids) for e in encs)
        trainable = tokens if built.task == "classification" else sum(e.trainable for e in encs)
        truncated = sum(e.truncated for e in encs)
    report = DataReport(built.train.path, built.format, built.task, len(built.train.norms) + len(built.val.norms),
                      len(built.train.norms), len(built.val.norms), tokens, trainable, lengths, truncated,
                      built.label_names, built.problems, skipped=built.skipped, label_counts=built.label_counts,
                        columns=built.columns)
    if tokenizer is not None and built.task == "causal-lm":
        report.rendering = rendering(built.format, _load_tokenizer(tokenizer), cfg.instruction_format)
    return report


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


def rendering(fmt: str, tokenizer, instruction_format: str = "auto") -> str:
    """How rows of ``fmt`` reach this tokenizer's model, in words (check-data and the GUI say it)."""
    if fmt in ("chat", "sharegpt"):
        return "chat template" if has_chat_template(tokenizer) else "fallback chat template (saved with the export)"
    if fmt == "preference":
        return ("chat template" if has_chat_template(tokenizer) else "fallback chat template for message lists, "
                "text (prompt + answer) for strings") + ": the chosen and the rejected answer each after the prompt"
    if fmt in ("alpaca", "prompt-completion"):
        if uses_chat_template(tokenizer, instruction_format):
            return "chat template" if has_chat_template(tokenizer) else "fallback chat template (saved with the export)"
        return "text (Alpaca prompt)" if fmt == "alpaca" else "text (prompt + completion)"
    return "text"


def preview(cfg, tokenizer, n: int, *, task: str | None = None, seed: int = 42) -> list[dict]:
    """The first ``n`` usable rows (file order) as the model sees them: ``{"row", "text", "trained"}`` with the
    full rendered text and the text of the tokens under the loss, concatenated (``check-data --show``)."""
    built = build_rows(cfg, task, seed)
    tok = _load_tokenizer(tokenizer)
    pairs = sorted([(row, norm) for part in (built.train, built.val) for norm, row in zip(part.norms, part.rows)],
                   key=lambda rn: rn[0])
    out = []
    for row, norm in pairs[:max(0, n)]:
        if built.format == "preference":  # both sides, one item each
            try:
                pair = encode_pair(norm, tok, cfg.seq_len, cfg.instruction_format)
            except TemplateError as e:
                out.append({"row": row, "text": None, "trained": None, "error": str(e)})
                continue
            for side, enc in zip(SIDES, pair):
                texts = _token_texts(tok, enc.input_ids)
                out.append({"row": row, "side": side, "text": "".join(texts), "truncated": enc.truncated,
                            "trained": "".join(t for t, lab in zip(texts, enc.labels) if lab != IGNORE)})
            continue
        if built.task == "classification":
            enc = encode_classification_batch([norm["text"]], tok, cfg.seq_len)[0]
            texts, trained = _token_texts(tok, enc.input_ids), f"→ {norm['label']}"
        else:
            try:
                enc = encode_causal(norm, tok, cfg.seq_len, cfg.instruction_format)
            except TemplateError as e:
                out.append({"row": row, "text": None, "trained": None, "error": str(e)})
                continue
            texts = _token_texts(tok, enc.input_ids)
            trained = "".join(t for t, lab in zip(texts, enc.labels) if lab != IGNORE)
        out.append({"row": row, "text": "".join(texts), "trained": trained, "truncated": enc.truncated})
    return out


def render_example(record: dict, fmt: str, tokenizer, cfg, *, task: str | None = None) -> list[tuple[str, bool]]:
    """One row as (token text, under the loss) pairs for the GUI preview; raises DataError for a bad row.

    For classification no token is predicted: the tokens come back unmarked, followed by one
    ("→ <label>", True) item standing for the target.
    """
    if fmt == "auto":
        fmt = detect_format([record], cfg)
    text_col, label_col = resolve_columns([record], cfg)
    v = validator_for(fmt, "<preview>", text_col, label_col)
    norm = v.check(record, 1)
    errors = [p for p in v.problems if p.severity == "error"]
    if norm is None or errors:
        raise DataError("<preview>", problems=errors or [DataProblem("<preview>", 1, None, "row not usable")])
    tokenizer = _load_tokenizer(tokenizer)
    task = task if task not in (None, "auto") else ("classification" if fmt == "classification" else "causal-lm")
    if task == "classification":
        enc = encode_classification_batch([norm["text"]], tokenizer, cfg.seq_len)[0]
        return [(t, False) for t in _token_texts(tokenizer, enc.input_ids)] + [(f" → {norm.get('label')}", True)]
    if fmt == "preference":  # both sides, each under a header line that is not trained
        try:
            pair = encode_pair(norm, tokenizer, cfg.seq_len, cfg.instruction_format)
        except TemplateError as e:
            raise DataError("<preview>", 1, str(e).split(":", 1)[0], str(e)) from e
        out = []
        for side, enc in zip(SIDES, pair):
            out += [(f"{chr(10) if out else ''}── {side} ──{chr(10)}", False)]
            out += list(zip(_token_texts(tokenizer, enc.input_ids), (lab != IGNORE for lab in enc.labels)))
        return out
    try:
        enc = encode_causal(norm, tokenizer, cfg.seq_len, cfg.instruction_format)
    except TemplateError as e:
        raise DataError("<preview>", 1, "messages", str(e)) from e
    return list(zip(_token_texts(tokenizer, enc.input_ids), (lab != IGNORE for lab in enc.labels)))
