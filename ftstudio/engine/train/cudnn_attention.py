"""Causal attention through cuDNN's fused kernel where it applies: SDPA with cuDNN first in the backend order.

On an H200 (torch 2.11) cuDNN's attention runs forward + backward of a causal block in 0.69× the time of SDPA's
default flash kernel at Llama-3.2-1B's shape (4 × 2048, 32 heads of 64) and 0.56× at Llama-3-8B's (1 × 4096,
heads of 128), grouped heads included (tests/benchmarks/adamw_kernel_gpu.py). In `ftstudio train --preset
fastest` on the 1B shape: 61.0 k tokens/s against 56.5 k with flash, 20.2 GB peak against 21.6 GB. torch puts
flash first for an unmasked causal call, and transformers does not ask for cuDNN, so a user gets flash unless
they know the flag. (Fastest fell from 61.7 k to 56.5 k when the collator began dropping all-ones masks; with a
mask flash is ineligible and SDPA took cuDNN. Inferred from the speeds and peaks, which match, not profiled.)

The registered attention (:data:`NAME`) takes the one case it is sure of: CUDA tensors, no mask (full rows),
causal, no position bias or soft-capping, a query as long as the keys (training, no KV cache); grouped key/value
heads go in as they are (``enable_gqa``: cuDNN takes them). Every other call goes to transformers' own SDPA
function unchanged, so a padded batch or a generation step behaves as before. torch still checks each call's
eligibility: where cuDNN cannot run, flash (then the others) does. ``--attention sdpa`` turns it off.
"""
from __future__ import annotations

import os

NAME = "ftstudio_cudnn_sdpa"
MODE = os.environ.get("FTS_CUDNN_ATTENTION", "call")   # call: this module's attention; global: see below; off
_REGISTERED = False
ORDER: list = []


def _order() -> list:
    from torch.nn.attention import SDPBackend

    if not ORDER:
        ORDER.extend([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                      SDPBackend.MATH])
    return ORDER


def _forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
             **kwargs):
    import torch
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (attention_mask is None and causal and _on_gpu(query) and query.shape[2] > 1
             and query.shape[2] == key.shape[2] and kwargs.get("position_bias") is None
             and kwargs.get("softcap") is None and not kwargs.get("output_attentions", False)
             and query.shape[-1] == value.shape[-1])
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
    with sdpa_kernel(_order(), set_priority=True):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling,
                                                               is_causal=True, **gqa)
    return out.transpose(1, 2).contiguous(), None


def prefer_cudnn_globally() -> None:
    """The other way in (``FTS_CUDNN_ATTENTION=global``, for measuring): cuDNN first for every SDPA call of the
    process, set once before anything compiles; the model keeps transformers' own SDPA function."""
    from torch.nn.attention import sdpa_kernel

    sdpa_kernel(_order(), set_priority=True).__enter__()      # left entered: the order holds for the whole run


def _on_gpu(t) -> bool:
    return t.is_cuda


def register() -> str:
    """Make :data:`NAME` an attention transformers' models accept (``model.set_attn_implementation(NAME)``)."""
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _forward)
        _REGISTERED = True
    return NAME
