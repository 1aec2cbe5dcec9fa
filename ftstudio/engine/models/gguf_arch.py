"""What each architecture needs in a GGUF file: llama.cpp's architecture name, the hyperparameter keys its
loader reads, and the few tensor changes its converter (``convert_hf_to_gguf.py``) makes. Tensor names come
from the ``gguf`` package's ``TensorNameMap``; this table holds only what differs between families.

Quirks, as llama.cpp's converter has them:
- Llama and Mistral (written as ``llama``): q/k rows permuted to llama.cpp's interleaved rotary layout;
  Llama 3's rope scaling becomes a ``rope_freqs`` tensor.
- Qwen2, Qwen3, Phi-3, Gemma 2/3: rotated the NeoX way, so no permutation; Qwen3's q_norm/k_norm and Phi-3's
  fused qkv_proj / gate_up_proj are mapped as they are.
- Gemma 2/3 store RMSNorm weights as ``w - 1`` (the model computes ``x * (1 + w)``): 1 is added to every
  norm weight; the head is always the embedding. Gemma 2 writes both logit softcaps and the sliding window.
- Phi-3 writes its rotary width, the original context and its sliding window (0 for none), and longrope's
  factors as the ``rope_factors_long`` / ``rope_factors_short`` tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ftstudio.core.errors import ModelError


@dataclass(frozen=True)
class Arch:
    gguf: str                     # llama.cpp's architecture name (gguf.MODEL_ARCH_NAMES)
    permute_qk: bool = False      # Llama's rotary layout differs from HF's
    norm_shift: float = 0.0       # added to every *norm.weight
    head_is_embedding: bool = False


ARCHS = {
    "LlamaForCausalLM": Arch("llama", permute_qk=True),
    "MistralForCausalLM": Arch("llama", permute_qk=True),
    "Qwen2ForCausalLM": Arch("qwen2"),
    "Qwen3ForCausalLM": Arch("qwen3"),
    "Gemma2ForCausalLM": Arch("gemma2", norm_shift=1.0, head_is_embedding=True),
    "Gemma3ForCausalLM": Arch("gemma3", norm_shift=1.0, head_is_embedding=True),
    "Phi3ForCausalLM": Arch("phi3"),
}


def supported() -> dict[str, Arch]:
    """The table, less any family the installed gguf package does not know (an older gguf lacks Gemma 3)."""
    try:
        import gguf
        known = set(gguf.MODEL_ARCH_NAMES.values())
    except ImportError:
        return dict(ARCHS)
    return {cls: a for cls, a in ARCHS.items() if a.gguf in known}


def rope(cfg: dict) -> tuple[float, dict]:
    """(rope theta, rope scaling dict) from transformers 4's or 5's keys; Gemma 3's per-layer-type
    parameters give the full-attention layers' (llama.cpp's global rope)."""
    params = cfg.get("rope_parameters") or {}
    if isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]
    theta = cfg.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return float(theta), ({**scaling, "rope_type": kind} if kind != "default" else {})


def add_hparams(w, cfg: dict, arch: Arch, gguf_type: str, name: str) -> tuple[list, list[str]]:
    """Write the model's keys; returns (extra tensors [(gguf name, float32 array)], warnings)."""
    import gguf

    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w.add_name(name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or heads)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_vocab_size(cfg["vocab_size"])
    if head_dim != cfg["hidden_size"] // heads or arch.gguf in ("gemma2", "gemma3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta, scaling = rope(cfg)
    w.add_rope_freq_base(theta)
    extra, warnings = [], []
    kind = scaling.get("rope_type")
    if arch.gguf == "phi3":
        extra += _phi3(w, cfg, scaling, heads)
    else:
        w.add_rope_dimension_count(head_dim)
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(scaling["factor"])
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(scaling["factor"])
            w.add_rope_scaling_orig_ctx_len(scaling.get("original_max_position_embeddings",
                                                        cfg.get("max_position_embeddings", 2048)))
        elif kind == "llama3" and arch.gguf == "llama":
            extra.append(("rope_freqs.weight", llama3_rope_factors(cfg, scaling, head_dim)))
        elif kind:
            raise ModelError(f"rope scaling {kind!r} ({arch.gguf}) cannot be written to GGUF yet; supported: linear, "
                             "yarn, llama3 (Llama), longrope (Phi-3)")
    if arch.gguf in ("gemma2", "gemma3"):
        warnings += _gemma(w, cfg, arch, head_dim)
    elif arch.gguf != "phi3" and cfg.get("sliding_window") and cfg.get("use_sliding_window", arch.gguf == "llama"):
        warnings.append(f"its sliding window ({cfg['sliding_window']} tokens) is not kept: llama.cpp's "
                        f"{arch.gguf} attends to the whole context, so answers past that length may differ")
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return extra, warnings


def _phi3(w, cfg: dict, scaling: dict, heads: int) -> list:
    import numpy as np

    partial = cfg.get("partial_rotary_factor") or (cfg.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
    rope_dims = int(partial * cfg["hidden_size"]) // heads
    orig_ctx = (scaling.get("original_max_position_embeddings") or cfg.get("original_max_position_embeddings")
                or cfg.get("max_position_embeddings", 4096))
    w.add_rope_dimension_count(rope_dims)
    w.add_rope_scaling_orig_ctx_len(orig_ctx)
    w.add_sliding_window(cfg.get("sliding_window") or 0)    # 0: none (llama.cpp tells Phi-4 apart this way)
    long, short = scaling.get("long_factor"), scaling.get("short_factor")
    if not scaling:
        return []
    if scaling["rope_type"] not in ("longrope", "su") or not long or not short:
        raise ModelError(f"rope scaling {scaling['rope_type']!r} (phi3) cannot be written to GGUF yet; supported: "
                         "longrope with long_factor and short_factor")
    if len(long) != len(short) or len(long) * 2 != rope_dims:
        raise ModelError(f"rope scaling: long_factor and short_factor must have {rope_dims // 2} values each "
                         f"(they have {len(long)} and {len(short)})")
    scale = cfg.get("max_position_embeddings", orig_ctx) / orig_ctx
    w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(orig_ctx)) if scale > 1 else 1.0)
    return [("rope_factors_long.weight", np.asarray(long, dtype=np.float32)),
            ("rope_factors_short.weight", np.asarray(short, dtype=np.float32))]


def _gemma(w, cfg: dict, arch: Arch, head_dim: int) -> list[str]:
    warnings = []
    if arch.gguf == "gemma2":
        for key, add in (("attn_logit_softcapping", w.add_attn_logit_softcapping),
                         ("final_logit_softcapping", w.add_final_logit_softcapping)):
            if cfg.get(key) is not None:
                add(cfg[key])
            else:
                warnings.append(f"{key} is off in this model while llama.cpp's gemma2 applies its own default")
        w.add_sliding_window(cfg["sliding_window"])
    else:
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
        if cfg.get("sliding_window_pattern", 6) != 1 and cfg.get("sliding_window"):
            w.add_sliding_window(cfg["sliding_window"])
        local = (cfg.get("rope_parameters") or {}).get("sliding_attention", {}).get("rope_theta") \
            or cfg.get("rope_local_base_freq", 10000.0)
        if float(local) != 10000.0:
            warnings.append(f"its sliding layers' rope base is {local}; llama.cpp's gemma3 uses 10000")
        types = cfg.get("layer_types")
        if types and any((t == "full_attention") != ((i + 1) % 6 == 0) for i, t in enumerate(types)):
            warnings.append("its sliding/full layer pattern is not Gemma 3's one-in-six, which llama.cpp assumes")
    scalar = cfg.get("query_pre_attn_scalar", head_dim)
    if scalar != head_dim and scalar != cfg["hidden_size"] // cfg["num_attention_heads"]:
        warnings.append(f"it scales attention by query_pre_attn_scalar={scalar}; llama.cpp uses the head size "
                        f"({head_dim}), so its answers will differ")
    return warnings


def llama3_rope_factors(cfg: dict, scaling: dict, head_dim: int):
    """Llama 3's per-frequency rope scaling, which llama.cpp reads as the ``rope_freqs`` tensor."""
    import numpy as np

    theta, _ = rope(cfg)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def convert_tensor(array, hf_name: str, arch: Arch, cfg: dict):
    """The tensor as llama.cpp wants it (float32 numpy in, float32 out)."""
    if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(array, cfg["num_attention_heads"])
    if arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(array, cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    if arch.norm_shift and hf_name.endswith("norm.weight"):
        return array + arch.norm_shift
    return array


def _permute(x, n_head: int):
    """HF keeps the two rotary halves of each head apart; llama.cpp's Llama rotates interleaved pairs."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
