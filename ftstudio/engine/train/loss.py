"""The chunked causal-LM loss (``memory.loss: chunked``): the LM head and cross-entropy run over slices of
tokens under activation checkpointing, so the batch × sequence × vocabulary fp32 logits never exist at
once. The plan in memory/plan.py counts exactly this (slice size from :func:`memory.chunk_tokens`); the trainer
and the GPU benchmark both call :func:`causal_lm_loss`. Imports torch; the memory room does not.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ftstudio.engine.memory import chunk_tokens


def logit_transform(model) -> tuple[float, float | None]:
    """(multiplier, soft-cap) the model's own forward applies to ``lm_head(hidden)``: Cohere's ``logit_scale``,
    Granite's ``logits_scaling`` (a divisor), Gemma 2's ``final_logit_softcapping`` (cap·tanh(x / cap)). A loss
    that bypasses the model's forward must apply them too, or it trains another model than the one exported."""
    cfg = getattr(model, "config", None)
    scale = float(getattr(cfg, "logit_scale", None) or 1.0)
    divisor = getattr(cfg, "logits_scaling", None)
    if divisor not in (None, 0):
        scale /= float(divisor)
    cap = getattr(cfg, "final_logit_softcapping", None)
    return scale, (float(cap) if cap else None)


def transform_logits(logits: torch.Tensor, scale: float = 1.0, cap: float | None = None) -> torch.Tensor:
    if scale != 1.0:
        logits = logits * scale
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _slice_loss(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, scale: float = 1.0,
                cap: float | None = None) -> torch.Tensor:
    logits = transform_logits(F.linear(hidden, weight, bias).float(), scale, cap)  # fp32 log-softmax, as HF does
    return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor,
                          chunk: int | None = None, scale: float = 1.0, cap: float | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of ``head(hidden)`` against ``labels`` (-100 = ignored), by slices.

    hidden: (batch, seq, d) after the final norm; labels: (batch, seq), unshifted, as HF models take them.
    """
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    h = hidden.reshape(-1, hidden.shape[-1])
    step = chunk or chunk_tokens(head.weight.shape[0])
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], step):
        # Recomputed in backward: only this slice's logits and their gradient are alive at a time.
        total = total + checkpoint(_slice_loss, h[i:i + step], head.weight, head.bias, targets[i:i + step],
                                   scale, cap, use_reentrant=False)
    return total / (targets != -100).sum().clamp(min=1)


def causal_lm_loss(model, batch: dict, *, chunked: bool) -> torch.Tensor:
    """The training loss of a Hugging Face causal LM on ``batch`` (input_ids, labels, attention_mask, ...).

    full: the model's own forward with labels (logits materialised); chunked: the base model's hidden
    states, then :func:`chunked_cross_entropy` over the output embedding.
    """
    if not chunked:
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = getattr(model, model.base_model_prefix, None) or model.model
    hidden = base(**inputs).last_hidden_state
    scale, cap = logit_transform(model)
    return chunked_cross_entropy(hidden, model.get_output_embeddings(), batch["labels"], scale=scale, cap=cap)
