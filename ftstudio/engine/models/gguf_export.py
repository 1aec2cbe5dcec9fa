"""A fine-tuned causal LM (``final/`` of a run, or any saved Hugging Face folder) written as one GGUF file for
llama.cpp and Ollama, with llama.cpp's own ``gguf`` package: ``GGUFWriter`` for the file, ``TensorNameMap``
for the tensor names, ``SpecialVocab`` for the special tokens and the chat template, ``gguf.quants`` for bf16
and q8_0 (see gguf_vocab.py for the tokenizer).

Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text) and Phi-3 are supported (gguf_arch.py holds each
family's keys and tensor changes, after llama.cpp's converter); any other architecture is refused by name.
The tensors are streamed: the header and tensor table are planned from the safetensors headers, then each
tensor is read, converted and written in turn, into ``OUT.gguf.part`` renamed when complete, so a failed
export leaves no half file. 1-D tensors stay float32 and a tied output head is not written, as llama.cpp's
converter does. A Modelfile for Ollama is written beside the file (gguf_modelfile.py).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftstudio.core.atomic import fsync_dir, fsync_file
from ftstudio.core.errors import ModelError
from ftstudio.engine.models.gguf_arch import Arch, add_hparams, convert_tensor, supported

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
    modelfile: str = ""
    modelfile_template: str = ""     # translated / left to Ollama / none

    def summary(self) -> str:
        v = self.vocab
        eot = (f", end of turn {v.get('eot_token')!r} ({v.get('eot_token_id')})"
               if v.get("eot_token_id") is not None and v.get("eot_token_id") != v.get("eos_token_id") else "")
        template = ("chat template included: llama.cpp uses it as written with --jinja (without it, llama.cpp "
                    "applies its built-in format for the family it recognises)" if v.get("chat_template")
                    else "no chat template")
        modelfile = (f"; Ollama Modelfile {self.modelfile} (template {self.modelfile_template})"
                     if self.modelfile else "")
        return (f"Wrote {self.path} ({self.architecture}, {self.gguf_type}, {v.get('tokenizer')} tokenizer, "
                f"{self.tensors} tensors, {self.bytes / 1e6:.1f} MB; eos {v.get('eos_token')!r} "
                f"({v.get('eos_token_id')}){eot}; {template}{modelfile})")


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


def _config(model_dir: Path) -> tuple[dict, Arch]:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    cls = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
    table = supported()
    if cls not in table:
        raise ModelError(f"{model_dir}: architecture {cls} cannot be exported to GGUF yet; supported: "
                         f"{', '.join(table)}")
    return cfg, table[cls]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / n for n in names]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    raise ModelError(f"{model_dir}: no model.safetensors; GGUF export reads safetensors weights "
                     "(save the model with save_pretrained(..., safe_serialization=True))")


def _plan(model_dir: Path, cfg: dict, arch: Arch, gguf_type: str):
    """[(gguf name, hf name, file, shape, ggml type)] in file order, from the safetensors headers alone."""
    import gguf
    from safetensors import safe_open

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.gguf)
    name_map = gguf.get_tensor_name_map(arch_id, cfg["num_hidden_layers"])
    wanted = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
              "q8_0": gguf.GGMLQuantizationType.Q8_0}[gguf_type]
    tied = cfg.get("tie_word_embeddings", False) or arch.head_is_embedding
    plan = []
    for file in _weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue
                shape = tuple(f.get_slice(hf_name).get_shape())
                name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise ModelError(f"{file}: tensor {hf_name} has no GGUF name for {arch.gguf}; this model has "
                                     f"parts llama.cpp's {arch.gguf} does not, so it cannot be exported")
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
    # A folder (one there, or a path written with a trailing separator, which Path would drop): the file goes
    # inside it, named after the run, as --gguf's help says; never a file named like the folder.
    folder = str(out).endswith(("/", os.sep))
    out = Path(out).expanduser()
    name = model_dir.parent.name if model_dir.name == "final" else model_dir.name
    if folder or out.is_dir():
        out = out / f"{name}-{gguf_type}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(model_dir, cfg, arch, gguf_type)
    part = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(part), arch.gguf)
    try:
        extra, warnings = add_hparams(writer, cfg, arch, gguf_type, name)
        vocab = add_vocab(writer, model_dir, cfg["vocab_size"])
        if not vocab["chat_template"]:
            warnings.append("the model has no chat template: llama.cpp and Ollama will use their own")
        if vocab["pre_tokenizer"] == "default" and vocab["tokenizer"] == "gpt2":
            warnings.append("its pre-tokenizer is none llama.cpp knows by name; llama.cpp will split text its "
                            "default way")
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
        for i, (gname, hf_name, file, _shape, qtype) in enumerate(plan):
            with safe_open(str(file), framework="pt") as f:
                array = f.get_tensor(hf_name).float().numpy()
            writer.write_tensor_data(_convert(convert_tensor(array, hf_name, arch, cfg), qtype))
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
    from ftstudio.engine.models.gguf_modelfile import write_modelfile

    modelfile, how = write_modelfile(out, model_dir, vocab)
    return GGUFExport(path=str(out), architecture=arch.gguf, gguf_type=gguf_type, tensors=len(plan) + len(extra),
                      bytes=out.stat().st_size, vocab=vocab, warnings=warnings, modelfile=str(modelfile),
                      modelfile_template=how)
