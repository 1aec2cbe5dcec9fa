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
function unchanged, so a padded batch or a generation step behaves as before. The masks are transformers' SDPA
masks (:func:`register` registers ``sdpa_mask`` under the same name): a name without a mask function of its own
gets no mask at all from transformers, which would drop padding and sliding windows. torch still checks each
call's eligibility: where cuDNN cannot run, flash (then the others) does. ``--attention sdpa`` turns it off.

Packed rows (:data:`PACKED`): a row that holds one document needs no mask beyond causality, and long documents
fill whole rows that way; a row holding several needs per-document masks. The packed attention decides per
batch from the masks transformers builds: no row with a document boundary (transformers finds none in the
restarting position_ids) → the cuDNN call above; otherwise flex_attention's block-sparse mask, as
``--attention flex_attention`` runs it. On the H200 the cuDNN kernel took 0.69× (1B) and 0.56× (8B) the time of
flash per layer; flex is about flash's speed.
"""
from __future__ import annotations

import os

NAME = "ftstudio_cudnn_sdpa"
PACKED = "ftstudio_packed"          # packed rows: cuDNN where no row has a document boundary, else flex
MODE = os.environ.get("FTS_CUDNN_ATTENTION", "call")   # call: this module's attention; global: see below; off
_REGISTERED: set[str] = set()
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


def _packed_forward(module, query, key, value, attention_mask, **kwargs):
    """A flex BlockMask (rows with several documents, padding, sliding windows) → transformers' flex attention;
    no mask (every row one document, no padding) → :func:`_forward`'s cuDNN call; a dense mask → SDPA."""
    from torch.nn.attention.flex_attention import BlockMask

    if isinstance(attention_mask, BlockMask):
        from transformers.integrations.flex_attention import flex_attention_forward

        return flex_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return _forward(module, query, key, value, attention_mask, **kwargs)


def _packed_mask(**kwargs):
    """The mask of :data:`PACKED`: None where SDPA's own mask would be None (a plain causal call: transformers found
    no document boundary, no padding, no window), else flex_attention's block mask of the same call."""
    from transformers.masking_utils import flex_attention_mask, sdpa_mask

    if (kwargs.get("allow_is_causal_skip", True) and kwargs.get("attention_mask") is None
            and kwargs.get("local_size") is None and sdpa_mask(**kwargs) is None):
        return None
    return flex_attention_mask(**kwargs)


def register(name: str = NAME) -> str:
    """Make ``name`` (:data:`NAME` or :data:`PACKED`) an attention transformers' models accept
    (``model.set_attn_implementation(name)``), with its mask function."""
    if name not in _REGISTERED:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        attention, mask = (_forward, sdpa_mask) if name == NAME else (_packed_forward, _packed_mask)
        AttentionInterface.register(name, attention)
        AttentionMaskInterface.register(name, mask)
        _REGISTERED.add(name)
    return name
