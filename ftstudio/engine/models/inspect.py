"""Read what a model is without loading it: config.json, safetensors headers, GGUF metadata.

Pure Python (json, struct, and the optional `gguf` reader): no torch import, so the GUI can describe a model
the moment the user picks it. Parameter counts are exact when weights are present (safetensors headers or GGUF
tensor shapes) and estimated from the config otherwise.
"""
from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from pathlib import Path

from ftstudio.core.errors import ModelError

# Architecture-name endings that mean "has a causal (next-token) LM head".
CAUSAL_ARCH_ENDINGS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
# model_type values of encoder-only (BERT-like) families: trained here as classifiers only.
ENCODER_TYPES = frozenset("""
    bert roberta xlm-roberta xlm-roberta-xl distilbert albert electra deberta deberta-v2 mpnet camembert
    modernbert ernie nomic_bert xlm flaubert funnel longformer big_bird convbert mobilebert squeezebert
    layoutlm megatron-bert nezha rembert roformer luke canine ibert data2vec-text xmod esm markuplm
    """.split())
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json",
                   "spiece.model", "sentencepiece.bpe.model")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
                       "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_LEARNED_POSITIONS = frozenset({"gpt2", "gpt_neo", "opt", "gpt_bigcode", "biogpt"})
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                 "max_seq_len", "model_max_length")
# Encoders whose learned positions start after the padding index (fairseq's make_positions): RoBERTa's 514
# position embeddings hold 512 tokens, and a row of 514 indexes past the table.
_POSITIONS_AFTER_PADDING = frozenset("""
    roberta roberta-prelayernorm xlm-roberta xlm-roberta-xl camembert longformer data2vec-text xmod luke ibert
    markuplm mpnet esm""".split())


def read_config(folder: Path) -> dict:
    """The folder's config.json as a dict; a ModelError names the file, line and column when it is broken."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no config.json, so this is not a Hugging Face model folder. Point at the "
                         "folder that save_pretrained wrote (it holds config.json and the weights), or at a .gguf file.")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}, line {e.lineno}, column {e.colno}: config.json is not valid JSON ({e.msg}). "
                         "Fix that line or download the model again.") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ModelError(f"{path}: cannot read config.json ({e}). Download the model again.") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}, line 1: config.json must hold a JSON object, not {type(cfg).__name__}.")
    return cfg


def text_config(cfg: dict) -> dict:
    """Multimodal configs nest the language model under text_config; sizes live there."""
    inner = cfg.get("text_config")
    return {**inner, **{k: v for k, v in cfg.items() if k not in inner}} if isinstance(inner, dict) else cfg


def _first(cfg: dict, *keys):
    for k in keys:
        if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool):
            return cfg[k]
    return None


def context_length(cfg: dict) -> int | None:
    """The longest row the model takes, in tokens: its position table's size (``max_position_embeddings`` and
    the like), less the padding offset of the encoders that number positions after the padding index."""
    c = text_config(cfg)
    n = _first(c, *_CONTEXT_KEYS)
    model_type = str(cfg.get("model_type") or c.get("model_type") or "")
    if (n and model_type in _POSITIONS_AFTER_PADDING and n == _first(c, "max_position_embeddings")
            and c.get("position_embedding_type", "absolute") == "absolute"):
        pad = 1 if model_type == "mpnet" else c.get("pad_token_id")   # MPNet's padding index is fixed at 1
        if isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < n - 1:
            n -= pad + 1
    return n if n and n > 0 else None


_DEFAULT_LABEL = re.compile(r"LABEL_\d+")


def head_labels(cfg: dict) -> list[str] | None:
    """The class names a sequence classifier's head was trained on, in id order (config.json's ``id2label``), or
    None where the config names none (transformers' LABEL_0, LABEL_1... defaults, or no classification head)."""
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    id2label = cfg.get("id2label")
    if not any(a.endswith("ForSequenceClassification") for a in archs) or not isinstance(id2label, dict):
        return None
    try:
        ordered = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return None
    if sorted(int(k) for k in id2label) != list(range(len(ordered))) or len(set(ordered)) != len(ordered):
        return None
    return None if all(_DEFAULT_LABEL.fullmatch(n) for n in ordered) else ordered


def config_facts(cfg: dict) -> dict:
    """Architecture, sizes and encoder-ness from a (HF-style) config dict."""
    c = text_config(cfg)
    archs = [a for a in (cfg.get("architectures") or []) if isinstance(a, str)]
    model_type = str(cfg.get("model_type") or c.get("model_type") or "")
    has_causal_head = any(a.endswith(CAUSAL_ARCH_ENDINGS) for a in archs)
    is_encoder = (not has_causal_head and not c.get("is_decoder", False)
                  and not cfg.get("is_encoder_decoder", False) and model_type in ENCODER_TYPES)
    return {
        "architecture": archs[0] if archs else (model_type or "unknown"),
        "model_type": model_type or "unknown",
        "vocab_size": _first(c, "vocab_size", "n_vocab", "padded_vocab_size"),
        "hidden_size": _first(c, "hidden_size", "n_embd", "d_model", "dim"),
        "num_layers": _first(c, "num_hidden_layers", "n_layer", "num_layers", "n_layers"),
        "context_length": context_length(cfg),
        "is_encoder": is_encoder,
        "config_dtype": c.get("dtype") or c.get("torch_dtype"),
    }


def _safetensors_header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100_000_000:
                raise ValueError(f"header length {size} is not plausible")
            return json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e}). Download the model again.") from None


def safetensors_stats(folder: Path) -> tuple[int, str] | None:
    """(exact parameter count, dominant dtype) from the headers of the folder's *.safetensors, or None."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, OSError) as e:
            raise ModelError(f"{index}: broken shard index ({e}). Download the model again.") from None
        paths = [folder / f for f in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        return None
    total, by_dtype = 0, Counter()
    for p in paths:
        if not p.is_file():
            raise ModelError(f"{p}: shard listed in {index.name} is missing. Download the model again.")
        for name, meta in _safetensors_header(p).items():
            if name == "__metadata__":
                continue
            n = math.prod(meta["shape"])
            total += n
            by_dtype[_SAFETENSORS_DTYPES.get(meta["dtype"], meta["dtype"].lower())] += n
    return total, (by_dtype.most_common(1)[0][0] if by_dtype else "unknown")


def has_weights(folder: Path) -> bool:
    folder = Path(folder)
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.pt"))


def has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / f).is_file() for f in TOKENIZER_FILES)
