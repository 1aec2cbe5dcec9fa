"""Row formats: detection from the columns, and validation that turns each row into a normal form.

Normal forms (what tokenisation sees):
  text               {"text": str}
  prompt-completion  {"prompt": str, "completion": str}   (alpaca rows become this, see ALPACA_PROMPT)
  chat / sharegpt    {"messages": [{"role": str, "content": str}, ...]}
  classification     {"text": str, "label": str}          (labels are kept as names; ids come later)
  preference         {"prompt", "chosen", "rejected"}      (strings or message lists: data/preference.py)

Each validator returns the normal form or None, recording problems that name the row and the field.
Pure Python.
"""
from __future__ import annotations

import difflib
import math
import re
import unicodedata
from collections import Counter
from typing import Callable

from ftstudio.core.errors import DataProblem

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "weight", "thinking",
                "reasoning_content", "function_call"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
                  "function_call": "assistant"}
SHAREGPT_KEYS = {"from", "value", "weight"}
TEXT_COLUMNS = ("text", "content", "sentence", "document")
LABEL_COLUMNS = ("label", "labels", "class", "category")
# The names public sets give a prompt and its answer (the first present is read): prompt/completion (TRL),
# prompt/response, question/answer; instruction/response with an optional context (Dolly) reads as alpaca.
PROMPT_COLUMNS = ("prompt", "question", "query")
COMPLETION_COLUMNS = ("completion", "response", "answer")
OUTPUT_COLUMNS = ("output", "response")
INPUT_COLUMNS = ("input", "context")


def _first(keys, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in keys), None)

# The Stanford Alpaca prompt (what alpaca-style checkpoints were trained on); the loss covers the output only.
ALPACA_PROMPT = ("Below is an instruction that describes a task{ctx}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n")


def _suggest(name: str, keys) -> str:
    close = difflib.get_close_matches(name, [k for k in keys if isinstance(k, str)], n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def row_format(rec: dict, text_column: str | None = None, label_column: str | None = None) -> str | None:
    """The format one row's keys suggest, or None when nothing fits."""
    keys = set(rec)
    if "chosen" in keys and "rejected" in keys:
        return "preference"  # TRL's preference rows (data/preference.py)
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and _first(keys, OUTPUT_COLUMNS):
        return "alpaca"
    if _first(keys, PROMPT_COLUMNS) and _first(keys, COMPLETION_COLUMNS):
        return "prompt-completion"
    text = text_column or next((c for c in TEXT_COLUMNS if c in keys), None)
    label = label_column or next((c for c in LABEL_COLUMNS if c in keys), None)
    if text in keys and label in keys:
        return "classification"
    if text in keys:
        return "text"
    strings = [k for k, v in rec.items() if isinstance(v, str)]
    if text_column is None and len(strings) == 1 and label is None:
        return "text"
    return None


def detect_format(records: list[dict], cfg) -> str:
    """The dataset's format: cfg.format when set, else what most of the first rows look like."""
    if getattr(cfg, "format", "auto") != "auto":
        return cfg.format
    votes = Counter(row_format(r, cfg.text_column, cfg.label_column) for r in records[:200])
    votes.pop(None, None)
    if not votes:
        return "text"  # validation then explains which column is missing
    # Ties go to the first row's format so that the order of the file decides, reproducibly.
    best = max(votes.values())
    for r in records:
        f = row_format(r, cfg.text_column, cfg.label_column)
        if votes.get(f) == best:
            return f
    return votes.most_common(1)[0][0]


def resolve_columns(records: list[dict], cfg) -> tuple[str, str]:
    """(text column, label column) for text/classification rows."""
    keys: Counter = Counter(k for r in records[:200] for k in r)
    text = cfg.text_column or next((c for c in TEXT_COLUMNS if c in keys), None)
    if text is None:
        strings = Counter(k for r in records[:200] for k, v in r.items() if isinstance(v, str))
        label_guess = cfg.label_column or next((c for c in LABEL_COLUMNS if c in keys), "label")
        strings.pop(label_guess, None)
        text = strings.most_common(1)[0][0] if len(strings) == 1 else "text"
    label = cfg.label_column or next((c for c in LABEL_COLUMNS if c in keys), "label")
    return text, label


FIX_ROW = "fill it in, or remove the row"   # the remedy of a row-level value that is not there


class Validator:
    """Checks rows of one format, collecting problems; ``check(rec, row)`` returns the normal form or None."""

    def __init__(self, fmt: str, path: str, text_column: str = "text", label_column: str = "label"):
        self.fmt, self.path = fmt, path
        self.text_column, self.label_column = text_column, label_column
        self.problems: list[DataProblem] = []
        self.label_kind: tuple[str, int] | None = None  # ("string"|"integer", first row) for mixed-type checks
        self._check: Callable = {
            "text": self._text, "prompt-completion": self._prompt_completion, "alpaca": self._alpaca,
            "chat": self._chat, "sharegpt": self._sharegpt, "classification": self._classification,
        }[fmt]

    def bad(self, row: int, fld: str | None, reason: str, severity: str = "error") -> None:
        self.problems.append(DataProblem(self.path, row, fld, reason, severity))

    def check(self, rec: dict, row: int):
        n = len(self.problems)
        other = row_format(rec, self.text_column, self.label_column)
        out = self._check(rec, row)
        if len(self.problems) > n and other not in (None, self.fmt) and \
                not (self.fmt == "classification" and other == "text"):
            self.problems[-1].reason += f" (this row looks like {other!r} data but the dataset is {self.fmt!r})"
        return out if len(self.problems) == n or all(p.severity != "error" for p in self.problems[n:]) else None

    def _string(self, rec: dict, key: str, row: int, *, allow_empty: bool = False, where: str | None = None):
        fld = where or key
        if key not in rec:
            self.bad(row, fld, f"missing field {key!r}{_suggest(key, rec)}; the row has {', '.join(map(str, rec))}"
                     if isinstance(rec, dict) and where is None else f"missing field {key!r}")
            return None
        v = rec[key]
        if v is None or (isinstance(v, float) and math.isnan(v)):
            self.bad(row, fld, f"value is null; {FIX_ROW}")
            return None
        if not isinstance(v, str):
            self.bad(row, fld, f"expected a string, got {_kind(v)}; write it as text in quotes, or remove the row")
            return None
        if not allow_empty and not v.strip():
            self.bad(row, fld, f"text is empty; {FIX_ROW}")
            return None
        return v

    def _text(self, rec, row):
        t = self._string(rec, self.text_column, row)
        return None if t is None else {"text": t}

    def _prompt_completion(self, rec, row):
        p = self._string(rec, _first(rec, PROMPT_COLUMNS) or "prompt", row, allow_empty=True)
        c = self._string(rec, _first(rec, COMPLETION_COLUMNS) or "completion", row)
        return None if p is None or c is None else {"prompt": p, "completion": c, "user": p}

    def _alpaca(self, rec, row):
        ins = self._string(rec, "instruction", row)
        given = _first(rec, INPUT_COLUMNS)
        inp = self._string(rec, given, row, allow_empty=True) if given else ""
        out = self._string(rec, _first(rec, OUTPUT_COLUMNS) or "output", row)
        if ins is None or inp is None or out is None:
            return None
        prompt = ALPACA_PROMPT.format(ctx=", paired with an input that provides further context" if inp.strip()
                                      else "", instruction=ins, input=f"### Input:\n{inp}\n\n" if inp.strip() else "")
        # The chat-template rendering (data.instruction_format) sends the instruction and its input as the user turn.
        user = f"{ins}\n\n{inp}" if inp.strip() else ins
        return {"prompt": prompt, "completion": out, "user": user}

    def _turns(self, rec, row, key: str):
        if key not in rec:
            self.bad(row, key, f"missing field {key!r}{_suggest(key, rec)}")
            return None
        turns = rec[key]
        if turns is None:
            self.bad(row, key, f"value is null; {FIX_ROW}")
            return None
        if not isinstance(turns, list):
            self.bad(row, key, f"expected a list of turns, got {_kind(turns)}; write it as "
                               '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]')
            return None
        if not turns:
            self.bad(row, key, "the conversation is empty; add its turns, or remove the row")
            return None
        return turns

    def _finish_chat(self, msgs, row, key: str):
        if msgs is None:
            return None
        if not any(m["role"] == "assistant" for m in msgs):
            self.bad(row, key, "the conversation has no assistant turn, so nothing would be trained; add the "
                               "answer as an assistant turn, or remove the row")
            return None
        return {"messages": msgs}

    def _chat(self, rec, row, column: str = "messages", need_assistant: bool = True):
        turns = self._turns(rec, row, column)
        if turns is None:
            return None
        msgs, ok = [], True
        for i, m in enumerate(turns):
            where = f"{column}[{i}]"
            if not isinstance(m, dict):
                self.bad(row, where, f"expected an object with 'role' and 'content', got {_kind(m)}")
                ok = False
                continue
            role = self._string(m, "role", row, where=f"{where}.role")
            if role is not None and role not in ROLES:
                self.bad(row, f"{where}.role", f"unknown role {role!r}{_suggest(role, ROLES)}; "
                                               f"use one of {', '.join(ROLES)}")
                role = None
            content = self._content(m, row, where, role)
            if role is None or content is None:
                ok = False
                continue
            msg = {"role": role, "content": content}
            for key in ("name", "tool_calls", "tool_call_id", "reasoning_content"):
                if m.get(key) is not None:
                    msg[key] = m[key]
            if m.get("thinking") is not None and "reasoning_content" not in msg:
                msg["reasoning_content"] = m["thinking"]  # the other common spelling of the same field
            weight = m.get("weight", 1)
            if weight not in (0, 1) or isinstance(weight, bool):
                self.bad(row, f"{where}.weight", f"weight must be 0 (not trained) or 1, got {weight!r}")
                ok = False
                continue
            if weight == 0:
                msg["weight"] = 0
            unused = sorted(set(m) - MESSAGE_KEYS, key=str)
            if unused:
                self.bad(row, f"{where}.{unused[0]}", f"field{'s' if len(unused) > 1 else ''} "
                         f"{', '.join(map(repr, unused))} not used (a message has {', '.join(sorted(MESSAGE_KEYS))})"
                         f"{_suggest(unused[0], MESSAGE_KEYS)}; ignored", "warning")
            msgs.append(msg)
        out = (self._finish_chat(msgs if ok else None, row, column) if need_assistant
               else {"messages": msgs} if ok else None)
        tools = rec.get("tools")
        if out is not None and tools is not None:
            if isinstance(tools, list) and all(isinstance(t, dict) for t in tools):
                out["tools"] = tools
            else:
                self.bad(row, "tools", f"expected a list of tool definitions (objects), got {_kind(tools)}")
                return None
        return out

    def _content(self, m: dict, row: int, where: str, role):
        """A message's text: a string, or OpenAI's list of parts whose text parts are joined. An assistant turn
        that only calls tools may have none."""
        v = m.get("content")
        if isinstance(v, list):
            texts = []
            for j, part in enumerate(v):
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    kind = part.get("type") if isinstance(part, dict) else _kind(part)
                    self.bad(row, f"{where}.content[{j}]", f"a {kind!r} part cannot be trained on by a text "
                                                          "model; give text parts only")
                    return None
            v = "".join(texts)
            if role == "assistant" and not v.strip() and not m.get("tool_calls"):
                self.bad(row, f"{where}.content", f"text is empty; {FIX_ROW}")
                return None
            return v
        if role == "assistant" and m.get("tool_calls") and v in (None, ""):
            return ""
        return self._string(m, "content", row, allow_empty=role != "assistant", where=f"{where}.content")

    def _sharegpt(self, rec, row):
        turns = self._turns(rec, row, "conversations")
        if turns is None:
            return None
        msgs, ok = [], True
        for i, m in enumerate(turns):
            where = f"conversations[{i}]"
            if not isinstance(m, dict):
                self.bad(row, where, f"expected an object with 'from' and 'value', got {_kind(m)}")
                ok = False
                continue
            extra = sorted(set(m) - SHAREGPT_KEYS, key=str)
            if extra:
                hint = " (that is OpenAI chat; use format 'chat' with 'messages')" if "role" in m else \
                    _suggest(extra[0], SHAREGPT_KEYS)
                self.bad(row, f"{where}.{extra[0]}", f"unexpected field {extra[0]!r}{hint}; a turn has from and value")
                ok = False
            who = self._string(m, "from", row, where=f"{where}.from")
            role = SHAREGPT_ROLES.get(who.lower()) if who is not None else None
            if who is not None and role is None:
                self.bad(row, f"{where}.from", f"unknown speaker {who!r}; use human, gpt or system")
            value = self._string(m, "value", row, allow_empty=role != "assistant", where=f"{where}.value")
            if role is None or value is None:
                ok = False
                continue
            msgs.append({"role": role, "content": value})
        return self._finish_chat(msgs if ok else None, row, "conversations")

    def _classification(self, rec, row):
        text = self._string(rec, self.text_column, row)
        if self.label_column not in rec:
            self.bad(row, self.label_column, f"missing label column {self.label_column!r}"
                     f"{_suggest(self.label_column, rec)}; the row has {', '.join(map(str, rec))}")
            return None
        raw = rec[self.label_column]
        label = _label_name(raw)
        if isinstance(label, DataProblem):  # reason only
            self.bad(row, self.label_column, label.reason)
            return None
        # A number (1, 1.0) and a text that is not one ("spam") in the same column is a mistake; a text that reads
        # as a whole number ("1", "01") goes with either.
        kind = "integer" if isinstance(raw, (int, float)) else None if _INTEGER.fullmatch(label) else "string"
        if kind is not None and self.label_kind is None:
            self.label_kind = (kind, row)
        elif kind is not None and self.label_kind[0] != kind:
            self.bad(row, self.label_column, f"label is {'an' if kind == 'integer' else 'a'} {kind} here but "
                                             f"{'an' if self.label_kind[0] == 'integer' else 'a'} "
                                             f"{self.label_kind[0]} in row {self.label_kind[1]}; use one type")
            return None
        # Spellings merged into one class (" spam", "01", 1.0, a decomposed "é") are reported once each.
        forms = self.__dict__.setdefault("_label_forms", {})  # class name -> {spelling: first row}
        spelling = repr(raw) if isinstance(raw, str) else f"{raw!r} (a number)"
        seen = forms.setdefault(label, {})
        if spelling not in seen:
            seen[spelling] = row
            if len(seen) > 1:
                first, first_row = next(iter(seen.items()))
                self.bad(row, self.label_column, f"label {spelling} is read as class {label!r}, the same class as "
                                                 f"{first} in row {first_row} (labels are compared without "
                                                 "surrounding spaces, in Unicode NFC, with 1, 1.0 and 01 one number)",
                         "warning")
        return None if text is None else {"text": text, "label": label}


_INTEGER = re.compile(r"-?\d+")
_WHOLE_NUMBER = re.compile(r"[+-]?\d+(\.0*)?")


def misspelt_classes(counts: dict[str, int], ratio: float = 5.0) -> list[tuple[str, str]]:
    """(rare, common) pairs of class names where the rare one (at most 1/``ratio`` as many rows) is spelt almost
    like the common one ("postive" beside "positive", "Spam" beside "spam"): most likely a typo that would train
    as a class of its own. Integer ids are never compared ("12" is not a typo of "13")."""
    names = [c for c in counts if not _INTEGER.fullmatch(c)]
    folded = {c.casefold(): c for c in sorted(names, key=lambda c: -counts[c])}
    out = []
    for rare in names:
        common = [c for c in names if c != rare and counts[c] >= ratio * counts[rare]]
        close = difflib.get_close_matches(rare.casefold(), [c.casefold() for c in common], n=1, cutoff=0.8)
        if close:
            out.append((rare, folded[close[0]]))
    return out


def _label_name(v):
    """A label's name as a string, or a DataProblem carrying the reason it is unusable. The same class gets the
    same name in every format: surrounding spaces dropped, Unicode NFC, and a whole number written as 1, 1.0,
    01 or +1 (a JSON number or a CSV cell alike) named "1"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return DataProblem("", None, None, "label is null; give the row its class, or remove it")
    if isinstance(v, bool):
        return DataProblem("", None, None, "label is a boolean; use a class name or an integer id")
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        name = unicodedata.normalize("NFC", v).strip()
        if not name:
            return DataProblem("", None, None, "label is empty; give the row its class, or remove it")
        if _WHOLE_NUMBER.fullmatch(name):
            return str(int(name.partition(".")[0]))
        return name
    return DataProblem("", None, None, f"label must be a class name or an integer id, got {_kind(v)}; write the "
                                       "class as a string or a whole number")


def sort_labels(names) -> list[str]:
    """Sorted label names; integer-like names sort numerically so that ids keep their meaning ("2" < "10")."""
    names = set(names)
    if all(_INTEGER.fullmatch(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)
