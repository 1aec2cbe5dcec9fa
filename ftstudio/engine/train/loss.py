"""Every causal-LM loss path of the trainer, in one room.

* :func:`training_loss` — what the trainer (and FSDP's loss method) calls: picks one of the paths below from
  ``memory.loss`` and whether the blocks are compiled.
* :func:`causal_lm_loss` — the model's own loss (``full``), or the chunked loss (``chunked``): the LM head and
  cross-entropy over slices of tokens under activation checkpointing, so the batch × sequence × vocabulary fp32
  logits never exist at once. The plan in memory/plan.py counts exactly this (slice size from
  :func:`memory.chunk_tokens`); the planner's tracer calls it too.
* :func:`fused_cross_entropy` — Liger's fused linear cross-entropy (CUDA, liger-kernel installed): the chunked
  loss without recomputing the logits.
* :func:`compiled_cross_entropy` — with ``compile`` and the full loss: the head and cross-entropy as one
  compiled graph (fp32 logits never stored).

Imports torch; the memory room does not.
"""
from __future__ import annotations

import functools

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


# -- the fused (Liger) and compiled heads, and the trainer's choice among the paths -----------------------
def liger_available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or present but broken (no triton): fall back
        return False
    return True


def fused_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Liger's fused linear cross-entropy (CUDA): mean next-token loss, logits never materialised whole."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    # Liger is a Triton kernel: autocast does not reach it, so cast to the compute dtype ourselves (the
    # cast's backward carries the gradient to fp32 master weights).
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
    h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    bias = head.bias.to(dtype) if getattr(head, "bias", None) is not None else None
    return liger_fused_linear_cross_entropy(h, head.weight.to(dtype), targets, bias, ignore_index=-100)


def plain_head(model) -> bool:
    """True when the model's logits are just ``lm_head(hidden)``: no soft-capping (Gemma 2) or logit scaling
    (Cohere, Granite) that the model's own forward would apply. Only then may the loss bypass that forward."""
    cfg = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(cfg, key, None)
        if value not in (None, 1, 1.0):
            return False
    return model.get_output_embeddings() is not None


def head_cross_entropy(hidden, weight, bias, targets, scale: float = 1.0, cap: float | None = None):
    logits = torch.nn.functional.linear(hidden, weight, bias)     # bf16 under autocast, like the model's own
    return torch.nn.functional.cross_entropy(transform_logits(logits.float(), scale, cap), targets, ignore_index=-100)


_COMPILED_HEAD = None


def compiled_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, scale: float = 1.0,
                           cap: float | None = None) -> torch.Tensor:
    """The LM head and mean next-token cross-entropy as one compiled graph: the same numbers as the model's
    own loss (bf16 logits under autocast, upcast to fp32), but inductor fuses the upcast, log-softmax and
    gather, and backward recomputes the softmax from the saved bf16 logits, so the fp32 logits and their
    gradient are never stored whole (with ``compile``, ``loss: full``)."""
    global _COMPILED_HEAD
    if _COMPILED_HEAD is None:
        _COMPILED_HEAD = torch.compile(head_cross_entropy)
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    return _COMPILED_HEAD(hidden.reshape(-1, hidden.shape[-1]), head.weight, getattr(head, "bias", None), targets,
                          scale, cap)


def training_loss(model, batch: dict, *, loss: str, compiled: bool = False) -> torch.Tensor:
    """The trainer's causal-LM loss: "full" (the model's own; with ``compiled``, the head and loss as one
    compiled graph), or "chunked" (fused Liger kernel on CUDA when installed, else the checkpointed slices of
    :func:`causal_lm_loss`)."""
    cuda = batch["input_ids"].is_cuda and model.get_output_embeddings() is not None
    if loss == "chunked" and cuda and plain_head(model) and liger_available():
        head = fused_cross_entropy   # Liger's kernel knows no logit scaling: plain heads only
    elif loss == "full" and compiled and cuda:
        scale, cap = logit_transform(model)   # the compiled head applies the model's own logit transforms
        head = functools.partial(compiled_cross_entropy, scale=scale, cap=cap)
    else:
        return causal_lm_loss(model, batch, chunked=loss == "chunked")   # the slices apply them too
    # (bypasses_forward below must name exactly the paths that reach this point or the chunked slices)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = getattr(model, model.base_model_prefix, None) or model.model
    hidden = base(**inputs).last_hidden_state
    return head(hidden, model.get_output_embeddings(), batch["labels"])


def bypasses_forward(model, batch: dict, *, loss: str, compiled: bool) -> bool:
    """True when :func:`training_loss` runs the base model and the head itself instead of ``model(**batch)``
    (chunked, Liger, compiled head): under FSDP2 it must then run as a registered forward method of the root."""
    cuda = batch["input_ids"].is_cuda and model.get_output_embeddings() is not None
    return loss == "chunked" or (loss == "full" and compiled and cuda)


_head_cross_entropy = head_cross_entropy   # the name plan_run.py's tracer imported before this room
