"""Load a safetensors checkpoint onto one device shard by shard, so the host holds one shard at a time.

Why: transformers 5's ``from_pretrained`` keeps every shard memory-mapped until the whole load ends, so a GPU
run's host peak RSS is the whole checkpoint (65 GB for a 32B bf16 model in 13 shards), not one shard.

How: the model is built from its config with the real classes straight on the device in the training dtype
(``from_config`` under ``torch.device``: the normal init runs there, so new heads, non-persistent buffers such as
rotary ``inv_freq`` and tied weights come out as ``from_pretrained`` makes them). Every checkpoint key is mapped to
a model key first, from the shard headers alone; then each shard is opened, its tensors are copied into the
parameters (``copy_`` converts the dtype), and it is closed before the next one is opened.

No guessing: when a key maps to no model key of the same shape (a classification head of another label count
excepted: it stays newly initialised, as with ``ignore_mismatched_sizes``), or transformers would rename or
convert it, :class:`Fallback` is raised before any weight is copied and the caller uses transformers' loader.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Fallback(Exception):
    """The checkpoint needs transformers' own loader; the message says why (the caller logs it)."""


def shard_files(folder) -> list[Path] | None:
    """The folder's safetensors shards in index order, or None when it has no ``model.safetensors[.index.json]``."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        try:
            weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise Fallback(f"{INDEX} is not readable ({type(e).__name__})") from None
        names = list(dict.fromkeys(weight_map.values()))
        return [folder / n for n in names]
    if (folder / SINGLE).is_file():
        return [folder / SINGLE]
    return None


def not_applicable(info, trust_remote_code: bool, device) -> str | None:
    """Why the shard loader does not apply to this source (None: it applies)."""
    if device is None:
        return "no device given (CPU load)"
    if str(device).startswith("meta"):
        return "the meta device holds no weights to copy into"
    if info.kind not in ("folder", "cache", "demo") or not info.path:
        return f"a {info.kind} source"
    if trust_remote_code:
        return "trust_remote_code is on (the model's own code loads itself)"
    folder = Path(info.path)
    if not folder.is_dir():
        return "not a folder"
    if (folder / "adapter_config.json").is_file():
        return "an adapter folder"
    if "quantization_config" in (info.config or {}):
        return "a quantized checkpoint"
    if (info.config or {}).get("transformers_weights"):
        return "config.json names its own weights file"
    try:
        files = shard_files(folder)
    except Fallback as e:
        return str(e)
    if files is None:
        return f"no {SINGLE} or {INDEX}"
    return None


def _keep_fp32_pattern(model, dtype):
    """from_pretrained's dtype plan: modules kept in fp32 (``_keep_in_fp32_modules[_strict]``), as one regex."""
    plan = model._get_dtype_plan(dtype) if hasattr(model, "_get_dtype_plan") else {}
    if not plan:
        return None
    return re.compile("|".join(f"(?:{p.replace('*', '.*')})" for p in plan))


def _transformers_renames(model, sd):
    """A function key -> (renamed key, converter pattern) as transformers' loader maps it, or None when this
    transformers has no such API (then the name and shape checks alone guard the mapping)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:
        return None
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = model.base_model_prefix or None

    def rename(key):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, sd)
        if renamed not in sd and key in sd:  # what transformers' loader does next
            renamed, pattern = key, None
        return renamed, pattern
    return rename


def _map_key(key: str, sd, prefix: str) -> str | None:
    if key in sd:
        return key
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in sd:
        return key[len(prefix) + 1:]  # a model-with-head checkpoint into the base model
    if prefix and f"{prefix}.{key}" in sd:
        return f"{prefix}.{key}"  # a base-model checkpoint (no prefix) into a model with a head
    return None


def plan(model, files: list[Path], *, head_may_differ: bool) -> dict:
    """Map every checkpoint key to a model key, from the shard headers. Raises :class:`Fallback` on anything
    it cannot map exactly. Returns {"copy": [(file, [(ckpt key, model key)])], "mismatched", "unused"}."""
    from safetensors import safe_open

    sd = model.state_dict()
    prefix = model.base_model_prefix or ""
    rename = _transformers_renames(model, sd)
    headers = []
    for f in files:
        if not f.is_file():
            raise Fallback(f"shard {f.name} is missing")
        with safe_open(str(f), framework="pt", device="cpu") as h:
            headers.append((f, {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}))
    ckpt_keys = [k for _, keys in headers for k in keys]
    prefixed = bool(prefix) and any(k.startswith(prefix + ".") for k in ckpt_keys)
    copy, mismatched, unused = [], [], []
    for f, keys in headers:
        pairs = []
        for key, shape in keys.items():
            target = _map_key(key, sd, prefix)
            if rename is not None:
                theirs, pattern = rename(key)
                if pattern is not None or (theirs in sd and theirs != target):
                    raise Fallback(f"transformers converts checkpoint key '{key}' (to '{theirs}')")
            if target is None:
                if prefixed and not key.startswith(prefix + "."):
                    unused.append(key)  # another class's head (lm_head into a classifier): from_pretrained drops it
                    continue
                raise Fallback(f"checkpoint key '{key}' matches no model weight")
            want = tuple(sd[target].shape)
            if shape != want:
                if head_may_differ and not target.startswith(prefix + "."):
                    mismatched.append(target)  # a classification head of another label count: stays new
                    continue
                raise Fallback(f"checkpoint key '{key}' has shape {list(shape)}, the model's {list(want)}")
            pairs.append((key, target))
        copy.append((f, pairs))
    return {"copy": copy, "mismatched": mismatched, "unused": unused}


def _tie_groups(model) -> dict[str, set[str]]:
    """Each state-dict name → every name sharing its tensor (tied weights appear under several names)."""
    by_id: dict[int, set[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        by_id.setdefault(id(t), set()).add(name)
    return {n: group for group in by_id.values() for n in group}


def load_by_shards(auto, folder, *, dtype, device, config_kwargs: dict | None = None,
                   head_may_differ: bool = False):
    """Build ``auto`` (an Auto* model class) from ``folder``'s config on ``device`` in ``dtype`` and copy the
    weights in shard by shard. Returns (model, new param names, note). Raises :class:`Fallback` (nothing
    loaded, device memory released) when transformers' loader must do it."""
    import gc

    import torch
    from safetensors import safe_open
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoConfig

    folder = Path(folder)
    files = shard_files(folder)
    if files is None:
        raise Fallback(f"no {SINGLE} or {INDEX}")
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False,
                                        **(config_kwargs or {}))
    config.name_or_path = str(folder)  # as from_pretrained sets it (the export and the run's log read it)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype)
    try:
        todo = plan(model, files, head_may_differ=head_may_differ)
    except Fallback:
        del model
        gc.collect()
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
        raise
    keep_fp32 = _keep_fp32_pattern(model, dtype)
    sd = model.state_dict(keep_vars=True)
    loaded: set[str] = set()
    with torch.no_grad():
        for f, pairs in todo["copy"]:
            with safe_open(str(f), framework="pt", device="cpu") as h:  # closed before the next shard opens
                for key, target in pairs:
                    dest = sd[target]
                    if keep_fp32 is not None and keep_fp32.search(target) and dest.is_floating_point():
                        dest.data = dest.data.to(torch.float32)  # same Parameter object: ties survive
                    dest.copy_(h.get_tensor(key))
                    loaded.add(target)
    model.tie_weights()
    model.eval()  # from_pretrained leaves the model in eval mode
    if model.can_generate() and hasattr(model, "adjust_generation_fn"):  # generation_config.json, as from_pretrained
        model.adjust_generation_fn(None, True, None, str(folder), cache_dir=None, force_download=False,
                                   proxies=None, local_files_only=True, token=None, revision=None, subfolder="",
                                   trust_remote_code=False)
    ties = _tie_groups(model)
    new = sorted(n for n in model.state_dict() if not (ties.get(n, {n}) & loaded))
    note = f"Weights: loaded shard by shard onto {device} ({len(files)} safetensors file(s), {len(loaded)} tensors)"
    if todo["unused"]:
        note += (f"; {len(todo['unused'])} checkpoint weights belong to no part of this model and were not loaded "
                 f"({', '.join(todo['unused'][:4])})")
    return model, sorted(set(new) | set(todo["mismatched"])), note
