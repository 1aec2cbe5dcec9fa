"""A fine-tuned causal LM (``final/`` of a run, or any saved Hugging Face folder) written as one GGUF file for
llama.cpp and Ollama, with llama.cpp's own ``gguf`` package: ``GGUFWriter`` for the file, ``TensorNameMap``
for the tensor names, ``SpecialVocab`` for the special tokens and the chat template, ``gguf.quants`` for bf16
and q8_0 (see gguf_vocab.py for the tokenizer).

Llama and Qwen2 are supported; any other architecture is refused by name. The tensors are streamed: the
header and tensor table are planned from the safetensors headers, then each tensor is read, converted and
written in turn, into ``OUT.gguf.part`` renamed when complete, so a failed export leaves no half file.
What llama.cpp's converter does that matters here: Llama's q/k projections are permuted to llama.cpp's
rotary layout (Qwen2's are not: llama.cpp rotates them the NeoX way), 1-D tensors stay float32, a tied
output head is not written, and Llama 3's rope scaling becomes a ``rope_freqs`` tensor.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftstudio.core.atomic import fsync_dir, fsync_file
from ftstudio.core.errors import ModelError

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}  # HF class → llama.cpp arch name
GGUF_TYPES = ("f16", "bf16", "q8_0")


@dataclass
class GGUFExport:
    """What ``export_gguf`` wrote."""
    path: str
    architecture: str
    gguf_type: str
    tensors: int
    bytes: int
    vocab: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        v = self.vocab
        eot = (f", end of turn {v.get('eot_token')!r} ({v.get('eot_token_id')})"
               if v.get("eot_token_id") is not None and v.get("eot_token_id") != v.get("eos_token_id") else "")
        return (f"Wrote {self.path} ({self.architecture}, {self.gguf_type}, {self.tensors} tensors, "
                f"{self.bytes / 1e6:.1f} MB; eos {v.get('eos_token')!r} ({v.get('eos_token_id')}){eot}; chat template "
                f"{'included' if v.get('chat_template') else 'none'})")


def resolve_model_dir(source: str | Path) -> Path:
    """A run folder → its ``final/``; a model folder → itself; anything else → a ModelError saying which."""
    p = Path(source).expanduser()
    if not p.exists():
        raise ModelError(f"{p}: no such folder; give a run folder (runs/…) or a saved model folder")
    if (p / "final" / "config.json").is_file():
        return p / "final"
    if (p / "config.json").is_file():
        return p
    if (p / "config.yaml").is_file():
        raise ModelError(f"{p}: this run has no final/ model (it was stopped, its export did not complete, or "
                         f"checkpoint.export was off); finish it first (ftstudio export {p} after a failed export, "
                         f"ftstudio train --resume {p} after a stop) and export again")
    raise ModelError(f"{p}: neither a run folder with final/ nor a model folder with config.json")


def _config(model_dir: Path) -> tuple[dict, str]:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    cls = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    if cls not in ARCHITECTURES:
        raise ModelError(f"{model_dir}: architecture {cls} cannot be exported to GGUF yet; supported: "
                         f"{', '.join(ARCHITECTURES)}")
    return cfg, ARCHITECTURES[cls]


def _rope(cfg: dict) -> tuple[float, dict]:
    """(rope theta, rope scaling dict) from either transformers 4's or 5's config keys."""
    params = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = cfg.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return float(theta), ({**scaling, "rope_type": kind} if kind != "default" else {})


def _add_hparams(w, cfg: dict, arch: str, gguf_type: str, name: str) -> tuple[dict, int]:
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
    if head_dim != cfg["hidden_size"] // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    theta, scaling = _rope(cfg)
    w.add_rope_freq_base(theta)
    kind = scaling.get("rope_type")
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(scaling["factor"])
        w.add_rope_scaling_orig_ctx_len(scaling.get("original_max_position_embeddings",
                                                    cfg.get("max_position_embeddings", 2048)))
    elif kind and not (kind == "llama3" and arch == "llama"):
        raise ModelError(f"rope scaling {kind!r} ({arch}) cannot be written to GGUF yet; supported: linear, yarn, "
                         "llama3 (Llama)")
    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return scaling, head_dim


def _llama3_rope_factors(cfg: dict, scaling: dict, head_dim: int):
    """Llama 3's per-frequency rope scaling, which llama.cpp reads as the ``rope_freqs`` tensor."""
    import numpy as np

    theta, _ = _rope(cfg)
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


def _permute_for_llama_cpp(x, n_head: int):
    """HF keeps the two rotary halves of each head apart; llama.cpp's Llama rotates interleaved pairs."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    raise ModelError(f"{model_dir}: no model.safetensors; GGUF export reads safetensors weights "
                     "(save the model with save_pretrained(..., safe_serialization=True))")


def _plan(model_dir: Path, cfg: dict, arch: str, gguf_type: str):
    """[(gguf name, hf name, file, shape, ggml type)] in file order, from the safetensors headers alone."""
    import gguf
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg["num_hidden_layers"])
    wanted = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    tied = cfg.get("tie_word_embeddings", False)
    plan = []
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue
                shape = tuple(f.get_slice(hf_name).get_shape())
                name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ModelError(f"{file}: tensor {hf_name} has no GGUF name for {arch}; this model has parts "
                                     "llama.cpp's Llama/Qwen2 do not, so it cannot be exported")
                qtype = wanted
                if len(shape) < 2:
                    qtype = gguf.GGMLQuantizationType.F32  # norms and biases: tiny, and kept exact as llama.cpp does
                elif qtype == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
                    qtype = gguf.GGMLQuantizationType.F16  # rows that q8_0's 32-wide blocks cannot split
                plan.append((name, hf_name, file, shape, qtype))
    return plan


def _nbytes(shape, qtype) -> tuple[tuple, int]:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = math.prod(shape)
    return shape, n // block * size


def _convert(array, qtype):
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    return gguf.quants.quantize(array.astype(np.float32), qtype)


def export_gguf(source: str | Path, out: str | Path, gguf_type: str = "f16", *, log=None) -> GGUFExport:
    """Write ``source`` (a run folder or a model folder) as the GGUF file ``out``; ``log(str)`` hears progress."""
    from ftstudio.engine.models.gguf import require_gguf

    if gguf_type not in GGUF_TYPES:
        raise ModelError(f"GGUF type {gguf_type!r} is not one of {', '.join(GGUF_TYPES)}")
    gguf = require_gguf()
    import numpy as np
    from safetensors import safe_open

    from ftstudio.engine.models.gguf_vocab import add_vocab, check_tokenizer

    model_dir = resolve_model_dir(source)
    cfg, arch = _config(model_dir)
    check_tokenizer(model_dir)
    out = Path(out).expanduser()
    name = model_dir.parent.name if model_dir.name == "final" else model_dir.name
    if out.is_dir():
        out = out / f"{name}-{gguf_type}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(model_dir, cfg, arch, gguf_type)
    part = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(part), arch)
    warnings: list[str] = []
    try:
        scaling, head_dim = _add_hparams(writer, cfg, arch, gguf_type, name)
        vocab = add_vocab(writer, model_dir, cfg["vocab_size"])
        if not vocab["chat_template"]:
            warnings.append("the model has no chat template: llama.cpp and Ollama will use their own")
        if vocab["pre_tokenizer"] == "default":
            warnings.append("its pre-tokenizer is none llama.cpp knows by name; llama.cpp will split text its "
                            "default way")
        extra = []
        if scaling.get("rope_type") == "llama3":
            extra.append(("rope_freqs.weight", _llama3_rope_factors(cfg, scaling, head_dim)))
        total = 0
        for gname, _hf, _file, shape, qtype in plan:
            byte_shape, n = _nbytes(shape, qtype)
            dtype = {gguf.GGMLQuantizationType.F32: np.float32,
                     gguf.GGMLQuantizationType.F16: np.float16}.get(qtype, np.uint8)
            if dtype is np.uint8:
                byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(gname, byte_shape, np.dtype(dtype), n, raw_dtype=qtype)
            total += n
        for gname, array in extra:
            writer.add_tensor_info(gname, array.shape, array.dtype, array.nbytes, raw_dtype=None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        for i, (gname, hf_name, file, _shape, qtype) in enumerate(plan):
            with safe_open(str(file), framework="pt") as f:
                array = f.get_tensor(hf_name).float().numpy()
            if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                array = _permute_for_llama_cpp(array, n_head)
            elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                array = _permute_for_llama_cpp(array, n_kv)
            writer.write_tensor_data(_convert(array, qtype))
            if log is not None and (i % 20 == 0 or i == len(plan) - 1):
                log(f"{i + 1}/{len(plan)} tensors")
        for _gname, array in extra:
            writer.write_tensor_data(array)
        writer.close()
        fsync_file(part)   # on the disk before its final name exists (core/atomic.py)
        os.replace(part, out)
        fsync_dir(out.parent)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise
    return GGUFExport(path=str(out), architecture=arch, gguf_type=gguf_type, tensors=len(plan) + len(extra),
                      bytes=out.stat().st_size, vocab=vocab, warnings=warnings)
