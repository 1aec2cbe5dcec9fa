"""Normal-form rows → token ids with a loss mask; padding and packing collators.

The loss mask is computed on characters, then mapped to tokens: each row is rendered to one string with
spans (character ranges) whose tokens are trained — the completion, or each assistant turn of a chat. The
string is tokenised once, and a token is under the loss when its last character falls inside a span (so a
BPE token " yes" that starts with the prompt's trailing space still counts as completion). Tokenising the
whole string once, rather than prompt and completion separately, gives exactly the ids the model will see
at inference. ``labels[i]`` is -100 wherever token i is not predicted by the loss, which includes the very
first token (no position predicts it), so counting ``labels != -100`` counts the tokens really trained.
"""
from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100

# Used when the tokenizer has no chat template of its own. Role headers are plain text (no new tokens, so the
# embedding matrix keeps its size); each turn ends with the EOS token, so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class TemplateError(ValueError):
    """The chat template refused a conversation (e.g. roles that do not alternate)."""


def chat_template(tokenizer) -> str:
    return getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE


def _render(tokenizer, messages, gen: bool) -> str:
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                            chat_template=chat_template(tokenizer))
    except Exception as e:  # jinja's raise_exception and template bugs alike
        raise TemplateError(f"the chat template refused this conversation: {str(e).splitlines()[0][:200]}") from e
    return out if isinstance(out, str) else out[0]


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of the assistant turns (each with its end-of-turn marker).

    A turn's span runs from the end of the conversation rendered up to it with the generation prompt, to the
    end of the conversation rendered through it. Templates that rewrite earlier turns (so those renderings are
    not prefixes of the whole) fall back to finding the turn's content in the text.
    """
    text = _render(tokenizer, messages, gen=False)
    spans, cursor = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], gen=True)) if i else 0
        through = _render(tokenizer, messages[: i + 1], gen=False)
        end = len(through)
        if start < cursor or end <= start or not text.startswith(through):
            found = text.find(m["content"], cursor)
            if found < 0:
                raise TemplateError(f"the chat template dropped assistant turn {i + 1}; cannot mask it")
            start, end = found, found + len(m["content"])
        spans.append((start, end))
        cursor = end
    return text, spans


def _in_spans(end: int, spans) -> bool:
    return any(s < end <= e for s, e in spans)


def encode_spans(tokenizer, text: str, spans, *, add_special: bool, add_eos: bool, seq_len: int) -> Encoded:
    """Tokenise ``text``; tokens whose last character lies in a span get their id as label, others -100."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True,
                        return_special_tokens_mask=True, verbose=False)
        ids = list(enc["input_ids"])
        special = enc["special_tokens_mask"] if add_special else [0] * len(ids)
        keep = [not sp and _in_spans(e, spans) and e > s for (s, e), sp in zip(enc["offset_mapping"], special)]
    else:  # slow tokenizers have no offsets: tokenise the pieces between span borders separately
        ids, keep = [], []
        cuts = sorted({0, len(text), *[b for sp in spans for b in sp]})
        for a, b in zip(cuts, cuts[1:]):
            piece = tokenizer(text[a:b], add_special_tokens=False, verbose=False)["input_ids"]
            ids += piece
            keep += [_in_spans(b, spans)] * len(piece)
        if add_special and getattr(tokenizer, "bos_token_id", None) is not None and \
                getattr(tokenizer, "add_bos_token", False):
            ids, keep = [tokenizer.bos_token_id] + ids, [False] + keep
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None and (not ids or ids[-1] != eos):
        ids, keep = ids + [eos], keep + [True]  # the model learns to stop after a completion
    labels = [t if k else IGNORE for t, k in zip(ids, keep)]
    if labels:
        labels[0] = IGNORE  # no position predicts the first token
    full = len(ids)
    return Encoded(ids[:seq_len], labels[:seq_len], full)


def encode_causal(norm: dict, tokenizer, seq_len: int) -> Encoded:
    """One normal-form row (text / prompt-completion / messages) for a causal LM."""
    if "messages" in norm:
        text, spans = render_chat(tokenizer, norm["messages"])
        # The template writes BOS itself when the model wants one; adding special tokens would double it.
        return encode_spans(tokenizer, text, spans, add_special=False, add_eos=False, seq_len=seq_len)
    if "completion" in norm:
        text = norm["prompt"] + norm["completion"]
        return encode_spans(tokenizer, text, [(len(norm["prompt"]), len(text))], add_special=True,
                            add_eos=True, seq_len=seq_len)
    return encode_spans(tokenizer, norm["text"], [(0, len(norm["text"]))], add_special=True, add_eos=True,
                        seq_len=seq_len)


def encode_classification_batch(texts: list[str], tokenizer, seq_len: int) -> list[Encoded]:
    """Texts for a sequence classifier (labels are set by the caller; every token feeds the prediction)."""
    full = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    cut = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
    return [Encoded(list(c), [], len(f)) for c, f in zip(cut, full)]


def pack(examples: list[dict], seq_len: int) -> list[dict]:
    """Greedily concatenate examples (in order) into rows of at most seq_len tokens; documents are not split.

    ``position_ids`` restart at 0 for each document: the collator derives the block-diagonal attention from
    them, and the loss never crosses documents because each document's first label is already -100.
    """
    rows: list[dict] = []
    cur = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        n = len(ex["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > seq_len:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += ex["labels"]
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


def pad_id_of(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return v
    return 0


def block_causal_mask(position_ids):
    """(B, L) position ids restarting per document → (B, 1, L, L) bool mask, True where attention is allowed.

    A boolean 4-D mask is passed through by transformers unchanged and SDPA reads True as "attend".
    """
    import torch

    starts = position_ids == 0
    doc = torch.cumsum(starts.long(), dim=-1)  # document index of every position
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    same = doc[:, :, None] == doc[:, None, :]
    return (same & causal)[:, None, :, :]


class Collator:
    """Pads a list of examples into tensors for the model's forward (picklable, for DataLoader workers)."""

    def __init__(self, pad_id: int, task: str, packed: bool = False):
        self.pad_id, self.task, self.packed = pad_id, task, packed
        # Packed rows: a dense (B, 1, L, L) mask works with any attention kernel; with flex_attention the
        # model derives block-sparse document masks from the restarting position_ids itself (transformers'
        # packed-sequence detection), so the trainer turns this on and no L×L mask is built or copied.
        self.positions_only = False

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        L = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
        if self.task == "classification":
            labels = torch.tensor([ex["label"] for ex in batch], dtype=torch.long)
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)
        for i, ex in enumerate(batch):
            labels[i, : len(ex["labels"])] = torch.tensor(ex["labels"], dtype=torch.long)
        if not self.packed:
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        # Padding forms its own "document" (positions 0..k), so no real token attends to it.
        pos = torch.zeros((len(batch), L), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["position_ids"])
            pos[i, :n] = torch.tensor(ex["position_ids"], dtype=torch.long)
            pos[i, n:] = torch.arange(L - n)
        if self.positions_only:
            return {"input_ids": ids, "labels": labels, "position_ids": pos}
        return {"input_ids": ids, "attention_mask": block_causal_mask(pos), "labels": labels,
                "position_ids": pos}
