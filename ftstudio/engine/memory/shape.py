"""The shape of a model source for the memory plan: config.json, with exact tensor shapes from the safetensors
headers when the folder has them. Pure Python, no torch."""
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
        if not isinstance(cfg, dict):
            raise ModelError(f"{p}: config.json is not a JSON object")
        return cfg, p.parent
    info = describe_model(source)
    folder = Path(info.path) if info.path and Path(info.path).is_dir() else None
    return info.config, folder


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
    shape = shape_from_config(cfg)
    exact = safetensors_shapes(folder) if folder is not None else None
    # Encoders saved without their classification head: keep our derived head, take the rest exactly.
    if exact and not shape.is_encoder:
        if not shape.tied and not any("lm_head" in n for n in exact):
            exact["lm_head.weight"] = (shape.vocab, shape.hidden)  # untied head missing from the file: created new
        shape.tensors, shape.exact = exact, True
    return shape, cfg
