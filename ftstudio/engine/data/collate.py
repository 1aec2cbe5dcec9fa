"""Examples → batches: packing documents into rows, padding, and the block-diagonal mask of packed rows."""
from __future__ import annotations

from ftstudio.engine.data.render import IGNORE


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


def trained_items(batch: dict) -> int:
    """What the loss of a collated batch averages over: the predicted tokens of a causal LM (labels shifted by
    one, as Hugging Face models shift them), the examples of a classifier. Read on the CPU batch."""
    labels = batch["labels"]
    if labels.dim() == 1:
        return int(labels.numel())
    return int((labels[:, 1:] != IGNORE).sum())


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
            # A row mixed in unpacked (general text under data mixing) is one document of its own.
            own = ex.get("position_ids") or list(range(len(ex["input_ids"])))
            n = len(own)
            pos[i, :n] = torch.tensor(own, dtype=torch.long)
            pos[i, n:] = torch.arange(L - n)
        if self.positions_only:
            return {"input_ids": ids, "labels": labels, "position_ids": pos}
        return {"input_ids": ids, "attention_mask": block_causal_mask(pos), "labels": labels,
                "position_ids": pos}
