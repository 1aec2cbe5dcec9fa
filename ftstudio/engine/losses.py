"""Losses that avoid materialising the full fp32 logits.

A causal LM's logits are batch × sequence × vocabulary: for a 150k vocabulary and 16k tokens that is
10 GB in fp32, plus their gradient. The chunked loss runs the LM head and the cross-entropy over slices of
tokens under activation checkpointing, so only one slice's logits exist at a time, in the forward and in
the backward pass. The result equals the full loss (the mean over tokens whose label is not -100).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _slice_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                           chunk_tokens: int = 4096) -> torch.Tensor:
    """Mean next-token cross-entropy of ``lm_head(hidden)`` against ``labels`` (HF convention: labels are the
    input ids, shifted here), computed ``chunk_tokens`` rows at a time."""
    hidden = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    count = keep.sum()
    hidden, targets = hidden[keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, t = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        total = total + checkpoint(_slice_loss_sum, h, weight, bias, t, use_reentrant=False)
    return total / count.clamp(min=1)


def causal_lm_forward_chunked(model, batch: dict, chunk_tokens: int = 4096) -> torch.Tensor:
    """Run the decoder without its LM head, then the chunked loss. Works for HF *ForCausalLM models that
    expose ``get_decoder()`` (or ``base_model``) and ``get_output_embeddings()``."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model.base_model
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = decoder(**inputs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return chunked_causal_lm_loss(hidden, model.get_output_embeddings(), batch["labels"], chunk_tokens)
