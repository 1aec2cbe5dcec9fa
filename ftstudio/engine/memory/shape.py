"""The shape of a model source for the memory plan: config.json, with exact tensor shapes from the safetensors
headers when the folder has them. Pure Python, no torch.

``check_model_config`` refuses, by name, what cannot be planned (or trained) honestly: sizes written as strings or
not positive, encoder-decoder models (T5, BART, Whisper) and models that are not text transformers (ViT, CLIP,
wav2vec2), rather than planning them as if they were a decoder."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from ftstudio.core.errors import ModelError
from ftstudio.engine.models import ModelShape, describe_model, shape_from_config


def read_config(source: str) -> tuple[dict, Path | None]:
    """(config dict, the folder holding the weights or None) for MODEL given as a config.json path, or as any
    source the model panel accepts ("demo", a folder, a cached or online hub id, a .gguf file): those are
    described by models.describe_model, which reads metadata only (no torch, no weights)."""
    p = Path(source).expanduser()
    if p.is_file() and p.suffix == ".json":
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"{p}: cannot read config.json: {e}") from None
        except RecursionError:
            raise ModelError(f"{p}: config.json nests too deeply to read") from None
        if not isinstance(cfg, dict):
            raise ModelError(f"{p}: config.json is not a JSON object")
        return cfg, p.parent
    try:
        info = describe_model(source)
    except RecursionError:
        raise ModelError(f"{source}: its config.json nests too deeply to read") from None
    folder = Path(info.path) if info.path and Path(info.path).is_dir() else None
    return info.config, folder


# model_type values of encoder-decoder families: a plan of one stack would be wrong, so they are refused by name.
ENCODER_DECODER_TYPES = frozenset("""t5 mt5 umt5 longt5 bart mbart pegasus pegasus_x marian m2m_100 nllb-moe
    switch_transformers fsmt prophetnet xlm-prophetnet led blenderbot blenderbot-small plbart bigbird_pegasus whisper
    speech_to_text speecht5 seamless_m4t seamless_m4t_v2 encoder-decoder vision-encoder-decoder
    speech-encoder-decoder""".split())
# model_type values of vision, audio and dual-encoder models: no causal LM or text classifier here.
NON_TEXT_TYPES = frozenset("""vit deit beit swin swinv2 convnext convnextv2 resnet regnet efficientnet mobilenet_v1
    mobilenet_v2 mobilevit dinov2 dino detr yolos segformer mask2former maskformer sam clip clip_vision_model siglip
    siglip_vision_model wav2vec2 wav2vec2-conformer hubert wavlm data2vec-audio data2vec-vision
    audio-spectrogram-transformer unispeech unispeech-sat levit poolformer van cvt dpt glpn""".split())
_INT_KEYS = ("hidden_size", "n_embd", "d_model", "dim", "num_hidden_layers", "n_layer", "num_layers", "n_layers",
             "vocab_size", "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "n_kv_heads",
             "head_dim", "intermediate_size", "n_inner", "ffn_dim", "max_position_embeddings", "n_positions",
             "type_vocab_size")
_FLOAT_KEYS = ("rope_theta", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "initializer_range",
               "attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop",
               "attn_pdrop", "embd_pdrop")


def check_model_config(cfg: dict, where: str) -> None:
    """Raise a ModelError naming the model and the field when config.json cannot describe a text transformer we
    plan and train: a number written as a string, a size that is not positive, an encoder-decoder or a model that
    is not a text model."""
    if not isinstance(cfg, dict):
        raise ModelError(f"{where}: config.json must hold a JSON object")
    parts = [("", cfg)] + [(f"{k}.", cfg[k]) for k in ("text_config",) if isinstance(cfg.get(k), dict)]
    for prefix, c in parts:
        for key in _INT_KEYS:
            v = c.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                fix = f"; write {v.strip()} without quotes" if isinstance(v, str) and v.strip().isdigit() else ""
                raise ModelError(f"{where}: config.json field '{prefix}{key}' is {v!r}, not a whole number{fix}")
            if v < 1 and key != "type_vocab_size":
                raise ModelError(f"{where}: config.json field '{prefix}{key}' is {v}; it must be at least 1")
        for key in _FLOAT_KEYS:
            v = c.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ModelError(f"{where}: config.json field '{prefix}{key}' is {v!r}, not a number"
                                 + ("; write it without quotes" if isinstance(v, str) else ""))
    mt = str(cfg.get("model_type") or "").lower()
    archs = [a for a in cfg.get("architectures") or [] if isinstance(a, str)]
    name = f"{archs[0]} (model_type '{mt}')" if archs else f"model_type '{mt or 'unknown'}'"
    if cfg.get("is_encoder_decoder") or mt in ENCODER_DECODER_TYPES:
        raise ModelError(f"{where}: {name} is an encoder-decoder model; FT Studio plans and trains decoder-only "
                         "language models and encoder classifiers, so it is refused rather than planned as one stack")
    vision = any(k in cfg for k in ("image_size", "num_channels", "sampling_rate", "num_mel_bins"))
    if mt in NON_TEXT_TYPES or ("vocab_size" not in cfg and "text_config" not in cfg and vision):
        raise ModelError(f"{where}: {name} is not a text model (an image, audio or dual encoder has no token "
                         "vocabulary to train on); FT Studio plans and trains text transformers")


def safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """Exact tensor shapes from the safetensors headers in ``folder`` (8-byte length + JSON), or None."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100_000_000:
                    return None
                header = json.loads(fh.read(n))
        except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
            return None
        for name, meta in header.items():
            if name != "__metadata__" and isinstance(meta, dict) and "shape" in meta:
                shapes[name] = tuple(int(x) for x in meta["shape"])
    return shapes or None


def load_shape(source: str) -> tuple[ModelShape, dict]:
    """The shape of a model source; parameter tensors come from safetensors headers when the folder has them."""
    cfg, folder = read_config(source)
    check_model_config(cfg, source)
    shape = shape_from_config(cfg)
    exact = safetensors_shapes(folder) if folder is not None else None
    # Encoders saved without their classification head: keep our derived head, take the rest exactly.
    if exact and not shape.is_encoder:
        if not shape.tied and not any("lm_head" in n for n in exact):
            exact["lm_head.weight"] = (shape.vocab, shape.hidden)  # untied head missing from the file: created new
        shape.tensors, shape.exact = exact, True
    return shape, cfg
