"""Special tokens written as plain text inside a row ("<|im_end|>" in an answer that explains chat formats, a
scraped "<|endoftext|>"): the tokenizer reads each as the token itself, so an answer that holds the end-of-turn
token trains the model to end its turn there, and a "<|im_start|>user" inside it to start a new turn. Said once,
counted, with the first rows and fields; the rows still train as written (the user decides)."""
from __future__ import annotations

import re

from ftstudio.core.errors import DataProblem

SHOWN = 3


def special_pattern(tokenizer) -> re.Pattern | None:
    """One pattern for every special token the tokenizer matches inside text (longest first), or None."""
    names = set(getattr(tokenizer, "all_special_tokens", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names |= {t.content for t in added.values() if getattr(t, "special", False)}
    names = sorted((n for n in names if isinstance(n, str) and len(n) > 1), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, names))) if names else None


def _texts(norm: dict):
    """(field, text) of what a row's rendering puts in the model's input verbatim."""
    if "messages" in norm:
        for i, m in enumerate(norm["messages"]):
            if isinstance(m.get("content"), str):
                yield f"messages[{i}].content", m["content"]
    else:
        for key in ("prompt", "completion"):
            if isinstance(norm.get(key), str):
                yield key, norm[key]


def special_text(path: str, norms: list[dict], rows: list[int], tokenizer) -> DataProblem | None:
    """One warning for the rows whose chat or prompt/answer text holds special tokens, or None."""
    pattern = special_pattern(tokenizer)
    if pattern is None:
        return None
    found = []
    for norm, row in zip(norms, rows):
        for fld, text in _texts(norm):
            hit = pattern.search(text)
            if hit:
                found.append((row, fld, hit.group(0)))
                break
    if not found:
        return None
    where = "; ".join(f"row {r}, {f}: {t!r}" for r, f, t in found[:SHOWN]) + \
        (f"; … {len(found) - SHOWN} more rows" if len(found) > SHOWN else "")
    n = len(found)
    return DataProblem(path, found[0][0], found[0][1],
                       f"{n} row{'s hold' if n > 1 else ' holds'} the tokenizer's special tokens as plain text "
                       f"({where}): each is read as the token itself, so an end-of-turn token inside an answer "
                       "teaches the model to stop there; remove them from the text, or spell them differently",
                       "warning")
