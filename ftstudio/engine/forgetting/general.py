"""General text, the forgetting remedies' second data set: the retention evaluation (loss on text the run never
trains on), the mixing pool, and EWC's Fisher batches for a causal LM.

Mixing: each batch holds general rows in the asked fraction. When fraction × batch_size is not
whole, batches get its floor or its ceiling so that the running share stays within one row of the
fraction (error diffusion), instead of always rounding (which would turn 10 % of 4 rows into 0).
"""
from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ftstudio.core.errors import ConfigError, DataError, DataProblem
from ftstudio.engine.data import resources_dir
from ftstudio.engine.data.render import IGNORE
from ftstudio.engine.forgetting.anchors import to_device


def general_text_path() -> Path:
    """The bundled general-English paragraphs (resources/general/general.jsonl; see its README)."""
    return resources_dir() / "general" / "general.jsonl"


def load_general_texts(path: str | Path | None = None) -> list[str]:
    """Texts from a .jsonl/.json file (a "text" field per row) or a .txt/.md file (paragraphs split by blank lines)."""
    p = Path(path) if path is not None else general_text_path()
    try:
        raw = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(str(p), None, None, "general-text file not found") from None
    except UnicodeDecodeError:
        raise DataError(str(p), None, None, "not UTF-8 text") from None
    if p.suffix.lower() in (".jsonl", ".json"):
        texts = _texts_from_json(p, raw)
    else:
        paragraphs = [" ".join(block.split()) for block in raw.split("\n\n")]
        texts = [t for t in paragraphs if t]
    if not texts:
        raise DataError(str(p), None, None, "holds no text")
    return texts


def _texts_from_json(p: Path, raw: str) -> list[str]:
    if p.suffix.lower() == ".json":
        try:
            rows = json.loads(raw)
        except json.JSONDecodeError as e:
            raise DataError(str(p), e.lineno, None, f"invalid JSON: {e.msg}") from None
        if not isinstance(rows, list):
            raise DataError(str(p), None, None, "a .json general-text file must hold a list of {\"text\": ...}")
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for i, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    numbered.append((i, DataProblem(str(p), i, None, f"invalid JSON: {e.msg}")))
    texts, problems = [], []
    for i, row in numbered:
        if isinstance(row, DataProblem):
            problems.append(row)
        elif not isinstance(row, dict) or not isinstance(row.get("text"), str):
            problems.append(DataProblem(str(p), i, "text", "needs a string field \"text\""))
        elif row["text"].strip():
            texts.append(row["text"].strip())
    if problems:
        raise DataError(str(p), problems=problems)
    return texts


def general_examples(tokenizer, seq_len: int, path: str | Path | None = None) -> list[dict]:
    """General texts as causal-LM examples (labels = input_ids); a text longer than seq_len becomes several."""
    out = []
    eos = tokenizer.eos_token_id
    for text in load_general_texts(path):
        ids = tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        if eos is not None and (not ids or ids[-1] != eos):
            ids = ids + [eos]  # the model also learns where a text ends
        for start in range(0, len(ids), seq_len):
            chunk = ids[start:start + seq_len]
            if len(chunk) >= 2:  # a causal LM needs two tokens to predict one
                out.append({"input_ids": chunk, "labels": list(chunk)})
    return out


def collate_causal(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad causal-LM examples: input_ids, attention_mask, labels (IGNORE on padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def general_batches(tokenizer, seq_len: int, batch_size: int, path: str | Path | None = None,
                    limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Padded batches of the general set, in file order (retention evaluation, the EWC Fisher)."""
    examples = general_examples(tokenizer, seq_len, path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batches = [collate_causal(examples[i:i + batch_size], pad) for i in range(0, len(examples), batch_size)]
    return batches[:limit] if limit is not None else batches


def general_count(batch_index: int, batch_size: int, fraction: float) -> int:
    """General rows in batch ``batch_index``: the running total tracks fraction × rows to within one row."""
    per = fraction * batch_size
    return round(per * (batch_index + 1)) - round(per * batch_index)


def mix_examples(task_examples: list, general_examples: list, fraction: float, batch_size: int,
                 seed: int) -> list[list]:
    """One epoch of batches (lists of examples) in which ``fraction`` of the rows are general examples.

    Task rows are shuffled and each used once; general rows are drawn from a shuffled pool that is
    reshuffled whenever it runs out. Batch i holds g_i = round(f·B·(i+1)) − round(f·B·i) general rows
    (B = batch_size) and B − g_i task rows; with B = 1 and f = 0.1 every tenth batch is a general row.
    The last, short batch keeps the fraction too. Same seed, same batches.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError("regularize.mix_fraction", f"{fraction!r} must be in [0, 1)")
    if batch_size < 1:
        raise ConfigError("train.batch_size", f"{batch_size!r} must be >= 1")
    if fraction > 0 and not general_examples:
        raise ConfigError("regularize.mix_fraction", "the general set holds no examples to mix in")
    rng = random.Random(seed)
    task = list(task_examples)
    rng.shuffle(task)
    pool: list = []
    batches, used, i = [], 0, 0
    while used < len(task):
        g = general_count(i, batch_size, fraction)
        t_rows = task[used:used + batch_size - g]
        used += len(t_rows)
        if len(t_rows) < batch_size - g:  # the last, short batch keeps the fraction
            g = round(fraction * len(t_rows) / (1.0 - fraction))
        rows = list(t_rows)
        for _ in range(g):
            if not pool:
                pool = list(general_examples)
                rng.shuffle(pool)
            rows.append(pool.pop())
        batches.append(rows)
        i += 1
    return batches



# -- retention evaluation --------------------------------------------------------------------------
@torch.no_grad()
def retention_loss(model: nn.Module, batches: Iterable[dict]) -> tuple[float, float]:
    """(mean loss per predicted token, perplexity) of a causal LM on general-text batches.

    Weighted by tokens (not batches), so the result does not depend on how rows were batched. The
    caller wraps it in its autocast context if it trains in mixed precision.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    try:
        for batch in batches:
            batch = to_device(batch, device)
            n = int((batch["labels"][..., 1:] != IGNORE).sum())  # HF shifts the labels by one
            if n == 0:
                continue
            total += model(**batch).loss.double() * n
            tokens += n
    finally:
        model.train(was_training)
    if tokens == 0:
        raise ConfigError("regularize.retention_data", "the general set has no tokens to evaluate")
    loss = float(total) / tokens
    return loss, math.exp(loss) if loss < 700 else float("inf")
