"""The attention kernel a run uses (``model.attention``), chosen beside the kernels it can pick from.

``auto`` on one CUDA GPU: cuDNN's fused causal kernel (train/cudnn_attention.py) where every batch has one
length, flex_attention's block-sparse per-document masks for packed rows, SDPA's own choice otherwise. Each
choice is said in the run's log.
"""
from __future__ import annotations

import sys

from ftstudio.core.errors import ConfigError
from ftstudio.core.events import LogLine
from ftstudio.engine.train import cudnn_attention


def choose_attention(model, prepared, device: str, cfg, report) -> None:
    """Set the model's attention kernel (model.attention); for packed rows under flex_attention the
    collator then sends position_ids only and the model builds block-sparse document masks."""
    choice = cfg.model.attention
    packed = bool(getattr(prepared.collate, "packed", False))
    if choice == "auto":
        one_gpu = len(cfg.hardware.gpus) <= 1   # FSDP ranks keep the dense mask and the attention #19 measured
        flex_ok = (packed and device.startswith("cuda") and not getattr(sys, "frozen", False) and one_gpu
                   and getattr(model, "_supports_flex_attn", False) and _flex_available())
        cudnn = _cudnn_first(model, device) if one_gpu else None
        if flex_ok:   # one-document rows take cuDNN's causal kernel, the others flex's per-document masks
            choice = cudnn_attention.PACKED if cudnn else "flex_attention"
        elif cudnn and not packed and not _fixed_length(prepared, cfg.data.seq_len):
            # cuDNN builds a plan for each new sequence length (hundreds of ms each, forward and backward):
            # padded rows of varying length (length-grouped batches, evaluation) would pay it again and again.
            # SmolLM2 on 1,000 short rows took 71 s with cuDNN on the H200, its steps 0.3 s each.
            report(LogLine("Attention: SDPA's own kernels (rows vary in length; cuDNN's fused kernel plans each "
                           "new length anew, so it runs only where every batch has the same length)"))
            choice = None
        else:
            choice = cudnn
    if choice is None:
        return
    if choice == "flex_attention" and not device.startswith("cuda"):
        raise ConfigError("model.attention", f"flex_attention has no backward pass on {device}; use sdpa "
                                             "(or auto)")
    try:
        model.set_attn_implementation(choice)
    except Exception as e:  # noqa: BLE001 - a model without that kernel: say so, keep its default
        if cfg.model.attention != "auto":
            raise ConfigError("model.attention", f"{choice} is not available for this model: {e}") from None
        return
    if choice == cudnn_attention.NAME:
        report(LogLine("Attention: causal rows without padding run cuDNN's fused kernel (SDPA's flash kernel "
                       "otherwise; --attention sdpa keeps SDPA's own choice)"))
    if choice in ("flex_attention", cudnn_attention.PACKED) and packed:
        # transformers detects packed documents from position_ids only without a KV cache: training
        # never reads one, and building it would switch the detection off (attention across documents).
        model.config.use_cache = False
        prepared.collate.positions_only = True
        report(LogLine("Packed rows: " + ("a batch whose rows each hold one document runs cuDNN's causal kernel; "
                                          "rows holding several documents run " if choice != "flex_attention"
                                          else "") + "flex_attention with block-sparse per-document masks (no "
                       "dense L×L mask)"))


FIXED_SHARE = 0.9     # rows at seq_len (cut or full): nearly every batch is then seq_len long


def _fixed_length(prepared, seq_len: int) -> bool:
    """Nearly every training row fills seq_len, so batches keep one length (no new cuDNN plan each step)."""
    rows = getattr(prepared, "train", None) or []
    full = sum(1 for r in rows if len(r.get("input_ids", ())) >= seq_len)
    return bool(rows) and full >= FIXED_SHARE * len(rows)


def _cudnn_first(model, device: str) -> str | None:
    """cudnn_attention.NAME for a model on SDPA on a CUDA GPU (not the frozen bundle), else None (its default)."""
    if (not device.startswith("cuda") or getattr(sys, "frozen", False) or cudnn_attention.MODE == "off"
            or getattr(model.config, "_attn_implementation", None) != "sdpa"):
        return None
    if cudnn_attention.MODE == "global":
        cudnn_attention.prefer_cudnn_globally()
        return None
    cudnn_attention.register(cudnn_attention.PACKED)
    return cudnn_attention.register()


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
