"""Preference pairs (``train.method: dpo | simpo``): rows of a prompt, a chosen and a rejected answer, as TRL
reads them, validated row by row and encoded as two causal-LM rows that share the prompt.

Accepted rows (TRL's conventions):
  standard           {"prompt": str, "chosen": str, "rejected": str}
  conversational     {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
                     (a string next to message lists is a user turn for the prompt, an assistant turn for an answer)
  implicit prompt    {"chosen": ..., "rejected": ...}: the prompt is what both share: for message lists the
                     common prefix of turns, for strings the common prefix of characters (TRL's
                     ``extract_prompt``, which also gives a space before the split to the answers)

Each answer is rendered after its prompt exactly as SFT rows are (``render.encode_causal``: the chat template and
its assistant spans, or prompt + completion text ending with EOS), so the chosen and the rejected rows are what
the model sees at inference, and only the answer's tokens (with its end of turn) carry a log-probability; an
assistant turn inside the prompt is rendered but not scored (``weight: 0``). Pure Python; no torch.
"""
from __future__ import annotations

from ftstudio.core.errors import DataProblem
from ftstudio.engine.data.formats import Validator, _kind
from ftstudio.engine.data.render import IGNORE, Encoded, TemplateError, encode_causal

SIDES = ("chosen", "rejected")
MAX_ROW_WARNINGS = 20


def implicit_prompt(chosen, rejected):
    """(prompt, chosen, rejected) split where the two first differ (TRL's ``extract_prompt``)."""
    idx = min(len(chosen), len(rejected))
    for i in range(idx):
        if chosen[i] != rejected[i]:
            idx = i - 1 if isinstance(chosen, str) and i > 0 and chosen[i - 1] == " " else i
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


class PreferenceValidator(Validator):
    """Checks preference rows into ``{"prompt", "chosen", "rejected"}``: three strings, or three message lists."""

    def __init__(self, path: str, text_column: str = "text", label_column: str = "label"):
        super().__init__("chat", path, text_column, label_column)
        self.fmt = "preference"
        self._check = self._preference

    def _side(self, rec, row, key: str, *, answer: bool):
        """A string, or a validated message list (an answer's must hold an assistant turn later on)."""
        v = rec[key]
        if isinstance(v, list):
            out = self._chat(rec, row, column=key, need_assistant=False)
            return None if out is None else out["messages"]
        if v is None or isinstance(v, str):
            return self._string(rec, key, row, allow_empty=not answer)
        self.bad(row, key, f"expected a string or a list of messages, got {_kind(v)}")
        return None

    def _preference(self, rec, row):
        missing = [k for k in SIDES if k not in rec]
        if missing:
            self.bad(row, missing[0], f"missing field {missing[0]!r}; a preference row has chosen and rejected "
                                      f"(and usually prompt); the row has {', '.join(map(str, rec))}")
            return None
        has_prompt = rec.get("prompt") is not None and rec.get("prompt") != []  # else the implicit prompt
        parts = {k: self._side(rec, row, k, answer=k != "prompt") for k in ("prompt", *SIDES)
                 if k != "prompt" or has_prompt}
        if any(v is None for v in parts.values()):
            return None
        chat = any(isinstance(v, list) for v in parts.values())
        if chat:  # a string beside message lists is one turn: the user's prompt, the assistant's answer
            parts = {k: v if isinstance(v, list) else [] if k == "prompt" and not v.strip() else
                     [{"role": "user" if k == "prompt" else "assistant", "content": v}] for k, v in parts.items()}
        if not has_prompt:
            parts["prompt"], parts["chosen"], parts["rejected"] = implicit_prompt(parts["chosen"], parts["rejected"])
        for side in SIDES:
            ans = parts[side]
            if not ans or (isinstance(ans, str) and not ans.strip()):
                self.bad(row, side, "the chosen and rejected answers are the same" if parts["chosen"] ==
                         parts["rejected"] else f"the {side} answer is empty after the shared prompt")
                return None
            if chat and not any(m["role"] == "assistant" for m in ans):
                self.bad(row, side, f"the {side} answer has no assistant turn after the prompt (the turns both "
                                    "answers share), so nothing would be scored")
                return None
        if parts["chosen"] == parts["rejected"]:
            self.bad(row, "rejected", "the chosen and rejected answers are the same")
            return None
        norm = {"prompt": parts["prompt"], "chosen": parts["chosen"], "rejected": parts["rejected"]}
        tools = rec.get("tools")
        if chat and tools is not None:
            if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
                self.bad(row, "tools", f"expected a list of tool definitions (objects), got {_kind(tools)}")
                return None
            norm["tools"] = tools
        return norm


def side_row(norm: dict, side: str) -> dict:
    """One answer after its prompt as an SFT normal form (messages, or prompt + completion)."""
    if isinstance(norm["chosen"], list):
        prompt = [dict(m, weight=0) if m["role"] == "assistant" else m for m in norm["prompt"]]
        out = {"messages": prompt + norm[side]}
        if norm.get("tools"):
            out["tools"] = norm["tools"]
        return out
    return {"prompt": norm["prompt"], "completion": norm[side], "user": norm["prompt"]}


def encode_pair(norm: dict, tokenizer, seq_len: int, instruction_format: str = "auto") -> tuple[Encoded, Encoded]:
    """(chosen, rejected) rows, each masked to its answer's tokens; raises TemplateError naming the side."""
    out = []
    for side in SIDES:
        try:
            out.append(encode_causal(side_row(norm, side), tokenizer, seq_len, instruction_format))
        except TemplateError as e:
            raise TemplateError(f"{side}: {e}") from e
    return out[0], out[1]


def encode_pairs(built, part, tokenizer, seq_len: int, instruction_format: str = "auto") -> list[tuple[int, tuple]]:
    """(row, (chosen, rejected)) for each usable pair. A template refusal is an error naming the row and the side;
    a pair whose prompt leaves one answer no scored token within seq_len is skipped, said and counted
    (``built.skipped``), and every cut answer is counted in ``built.truncated``."""
    out, skipped = [], []
    for norm, row in zip(part.norms, part.rows):
        try:
            pair = encode_pair(norm, tokenizer, seq_len, instruction_format)
        except TemplateError as e:
            side = str(e).split(":", 1)[0]
            built.problems.append(DataProblem(part.path, row, side if side in SIDES else None, str(e)))
            continue
        empty = [s for s, enc in zip(SIDES, pair) if enc.trainable == 0]
        if empty:
            skipped.append(row)
            if len(skipped) <= MAX_ROW_WARNINGS:
                enc = pair[SIDES.index(empty[0])]
                built.problems.append(DataProblem(part.path, row, empty[0], f"no scored token of the {empty[0]} "
                                                  f"answer within seq_len={seq_len} (prompt and answer are "
                                                  f"{enc.full_length} tokens); pair skipped", "warning"))
            continue
        built.truncated += sum(enc.truncated for enc in pair)
        out.append((row, pair))
    built.skipped += len(skipped)
    if len(skipped) > MAX_ROW_WARNINGS:
        built.problems.append(DataProblem(part.path, None, None, f"{len(skipped)} of {len(part.norms)} pairs in all "
                                          f"were skipped (an answer without a scored token within seq_len={seq_len}); "
                                          "raise --seq-len or shorten the prompts", "warning"))
    return out


def pair_examples(encs: list[tuple[int, tuple]]) -> list[dict]:
    """Training examples: the chosen row under the SFT keys (its length groups the batches), the rejected beside it,
    and the source row (the key of its stored reference log-probabilities)."""
    return [{"input_ids": c.input_ids, "labels": c.labels, "rejected_input_ids": r.input_ids,
             "rejected_labels": r.labels, "row": row} for row, (c, r) in encs]


class PairCollator:
    """Pairs → one batch of 2B rows, the B chosen rows first and then the B rejected ones (TRL's concatenated
    forward: one forward scores both), right-padded; ``ref_logps`` (2B,) when every pair carries its stored
    reference log-probabilities. ``items``: what the loss averages over, the pairs."""

    packed = False
    dense_mask = False
    task = "causal-lm"

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        return self.host(batch)

    @staticmethod
    def items(batch: dict) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def host(self, batch: list[dict], pin: bool = False) -> dict:
        import torch

        seqs = [(ex["input_ids"], ex["labels"]) for ex in batch] + \
               [(ex["rejected_input_ids"], ex["rejected_labels"]) for ex in batch]
        L = max(len(ids) for ids, _ in seqs)
        ids = torch.full((len(seqs), L), self.pad_id, dtype=torch.long, pin_memory=pin)
        mask = torch.zeros((len(seqs), L), dtype=torch.long, pin_memory=pin)
        labels = torch.full((len(seqs), L), IGNORE, dtype=torch.long, pin_memory=pin)
        for i, (x, y) in enumerate(seqs):
            ids[i, :len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, :len(x)] = 1
            labels[i, :len(y)] = torch.tensor(y, dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if batch and all("ref" in ex for ex in batch):
            ref = [ex["ref"][0] for ex in batch] + [ex["ref"][1] for ex in batch]
            out["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
        return out
