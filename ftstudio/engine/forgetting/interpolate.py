"""θ(α) = (1−α)·θ0 + α·θ*: the weights between a run's base model (θ0) and its fine-tuned ``final/`` (θ*), which
keep most of the task gain while taking much of the forgetting back (weight-space ensembling, WiSE-FT: Wortsman
et al. 2022). α = 0 is the base model, α = 1 the fine-tuned one; both are reproduced bit for bit.

Streamed tensor by tensor: the pairs (θ*'s key, θ0's key) come from the safetensors headers alone; each output
tensor is read from the two checkpoints, mixed in float32 (``torch.lerp``) and cast to θ*'s dtype, and the output
is written in shards of at most ``max_shard_bytes`` (safetensors' own writer), so the host holds one output shard
and two input tensors, never a whole model. A base that is not a safetensors folder (a GGUF file, .bin weights)
is loaded whole by FT Studio's loader first (the note says so).

A tensor of θ* without a counterpart in θ0 (a classifier's new head) interpolates from its initialisation when
the run saved it (``init/new_params.safetensors``), else keeps θ*'s value; an embedding whose rows were added by
the run interpolates the rows both have. Every such tensor is named in the notes: nothing is kept silently.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ftstudio.core.errors import ConfigError, ModelError

INIT_FILE = Path("init") / "new_params.safetensors"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
DEFAULT_SHARD_BYTES = 2 * 1024 ** 3
_CHUNK = 1 << 24          # elements mixed in float32 at once (64 MB)


@dataclass
class Pair:
    key: str                   # the tensor's name in final/ (and in the output)
    final_file: Path
    base: tuple | None         # ("file", path, key) | ("dict", key) | ("init", path, key) | None: keeps θ*
    rows: bool = False         # θ0 has fewer rows (an embedding the run resized): the rows both have mix
    nbytes: int = 0            # θ*'s size (the output's)


@dataclass
class Plan:
    run_dir: Path
    final_dir: Path
    base_source: str
    pairs: list[Pair]
    notes: list[str] = field(default_factory=list)
    base_state: dict | None = None   # a base read whole (GGUF, .bin): its state dict on the CPU


def _headers(files: list[Path]) -> dict[str, tuple[Path, tuple, str]]:
    """key -> (file, shape, dtype name) for every tensor of the safetensors files."""
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as h:
            for k in h.keys():
                s = h.get_slice(k)
                out[k] = (f, tuple(s.get_shape()), s.get_dtype())
    return out


def _base_prefix(final_dir: Path) -> str:
    """The final model class's base_model_prefix ("bert", "model"...): maps a base checkpoint without it."""
    try:
        import transformers

        arch = (json.loads((final_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or [""])[0]
        return getattr(getattr(transformers, arch, None), "base_model_prefix", "") or ""
    except (OSError, ValueError):
        return ""


def _match(key: str, base_keys, prefix: str) -> str | None:
    if key in base_keys:
        return key
    if prefix and key.startswith(prefix + ".") and key[len(prefix) + 1:] in base_keys:
        return key[len(prefix) + 1:]          # final has a head around the base model
    if prefix and f"{prefix}.{key}" in base_keys:
        return f"{prefix}.{key}"
    return None


def run_parts(run_dir: str | Path) -> tuple[Path, Path, object]:
    """(run folder, final/, its RunConfig), or a ConfigError naming what is missing."""
    from ftstudio.core.config import RunConfig

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError("RUN", f"{run_dir} is not a run folder (no config.yaml)")
    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise ConfigError("RUN", f"{run_dir} has no final/ model (the run has not finished and exported)")
    return run_dir, final, RunConfig.load_run(run_dir / "config.yaml")


def plan_interpolation(run_dir: str | Path) -> Plan:
    """Pair every tensor of final/ with its θ0, from headers (a GGUF/.bin base is loaded here, whole)."""
    from ftstudio.engine.models import describe_model
    from ftstudio.engine.models.shards import Fallback, shard_files

    run_dir, final, cfg = run_parts(run_dir)
    final_files = shard_files(final)
    if not final_files:
        raise ModelError(f"{final} holds no safetensors weights")
    final_h = _headers(final_files)
    info = describe_model(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code,
                          revision=cfg.model.revision)
    notes: list[str] = []
    base_files = None
    if info.kind in ("folder", "cache", "demo") and info.path and Path(info.path).is_dir():
        try:
            base_files = shard_files(info.path)
        except Fallback:
            base_files = None
    base_state = None
    if base_files:
        base_h = {k: (f, shape) for k, (f, shape, _) in _headers(base_files).items()}
    else:
        base_state = _load_base_whole(cfg, final)
        base_h = {k: (None, tuple(v.shape)) for k, v in base_state.items()}
        notes.append(f"θ0 ({cfg.model.source}) is not a safetensors folder: it was loaded whole on the CPU")
    init_h = {}
    if (run_dir / INIT_FILE).is_file():
        init_h = {k: (f, shape) for k, (f, shape, _) in _headers([run_dir / INIT_FILE]).items()}
    prefix = _base_prefix(final)
    pairs, kept, resized, from_init = [], [], [], []
    for key, (f, shape, dtype) in final_h.items():
        nbytes = _nbytes(shape, dtype)
        bkey = _match(key, base_h, prefix)
        if key in init_h and init_h[key][1] == shape:
            pairs.append(Pair(key, f, ("init", init_h[key][0], key), nbytes=nbytes))
            from_init.append(key)
            continue
        if bkey is None:
            pairs.append(Pair(key, f, None, nbytes=nbytes))
            kept.append(key)
            continue
        bfile, bshape = base_h[bkey]
        where = ("file", bfile, bkey) if bfile is not None else ("dict", bkey)
        if bshape == shape:
            pairs.append(Pair(key, f, where, nbytes=nbytes))
        elif len(bshape) == len(shape) and bshape[1:] == shape[1:] and bshape[0] < shape[0]:
            pairs.append(Pair(key, f, where, rows=True, nbytes=nbytes))
            resized.append(f"{key} ({bshape[0]} of {shape[0]} rows)")
        else:
            pairs.append(Pair(key, f, None, nbytes=nbytes))
            kept.append(f"{key} (θ0 has shape {list(bshape)}, θ* {list(shape)})")
    inside = [k.split(" ")[0] for k in kept if prefix and k.startswith(prefix + ".")]
    if inside:  # a weight of the base model itself without its θ0: the output would not lie between the two models
        raise ModelError(f"θ0 ({cfg.model.source}) has no tensor of the same name and shape for {len(inside)} of "
                         f"final/'s base-model weights (e.g. {inside[0]}): its checkpoint names or shapes them "
                         "differently from final/; nothing was written")
    if from_init:
        notes.append(f"{len(from_init)} new tensor(s) interpolate from the initialisation the run saved: "
                     f"{', '.join(from_init[:4])}")
    if kept:
        notes.append(f"{len(kept)} tensor(s) have no θ0 and keep their fine-tuned values at every α: "
                     f"{', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''}")
    if resized:
        notes.append(f"rows added by the run keep their fine-tuned values: {', '.join(resized[:3])}")
    return Plan(run_dir, final, cfg.model.source, pairs, notes, base_state)


def _nbytes(shape, dtype: str) -> int:
    size = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
            "U16": 2}.get(dtype, 1)
    n = 1
    for d in shape:
        n *= d
    return n * size


def _load_base_whole(cfg, final: Path) -> dict:
    import torch

    from ftstudio.core.config import ModelConfig
    from ftstudio.engine.models import load_model

    arch = (json.loads((final / "config.json").read_text(encoding="utf-8")).get("architectures") or [""])[0]
    task = "classification" if "SequenceClassification" in arch else "causal-lm"
    loaded = load_model(ModelConfig(source=cfg.model.source, task=task, trust_remote_code=cfg.model.trust_remote_code,
                                    revision=cfg.model.revision), task=task)
    with torch.no_grad():
        return {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}


def _read(where: tuple, plan: Plan):
    from safetensors import safe_open

    if where[0] == "dict":
        return plan.base_state[where[1]]
    with safe_open(str(where[1]), framework="pt", device="cpu") as h:  # closed at once: no file stays mapped
        return h.get_tensor(where[2])


def mix(theta0, theta_star, alpha: float):
    """(1−α)·θ0 + α·θ* in float32, cast to θ*'s dtype; α = 0 and 1 return θ0 (cast) and θ* exactly."""
    import torch

    if not theta_star.is_floating_point() or alpha == 1.0:
        return theta_star
    if alpha == 0.0:
        return theta0.to(theta_star.dtype)
    if theta_star.dim() == 0 or theta_star.numel() <= _CHUNK:
        return torch.lerp(theta0.float(), theta_star.float(), float(alpha)).to(theta_star.dtype)
    # A large tensor (a 128k-token embedding) in row blocks: float32 copies of one block at a time, not of the whole
    # tensor (the same numbers: the mix is element by element).
    out = torch.empty_like(theta_star)
    rows = max(1, _CHUNK // max(1, theta_star[0].numel()))
    for i in range(0, theta_star.shape[0], rows):
        out[i:i + rows] = torch.lerp(theta0[i:i + rows].float(), theta_star[i:i + rows].float(), float(alpha))
    return out


def tensors(plan: Plan, alpha: float) -> Iterator[tuple[str, object]]:
    """(key, θ(α) tensor) one at a time, in final/'s order."""
    for pair in plan.pairs:
        star = _read(("file", pair.final_file, pair.key), plan)
        if pair.base is None:
            yield pair.key, star
            continue
        theta0 = _read(pair.base, plan)
        if pair.rows:
            out = star.clone()
            n = theta0.shape[0]
            out[:n] = mix(theta0, star[:n], alpha)
            yield pair.key, out
        else:
            yield pair.key, mix(theta0, star, alpha)


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError("--alpha", f"{alpha:g} must lie in [0, 1] (0: the base model, 1: the fine-tuned one)")
    return alpha


def write_interpolated(run_dir: str | Path, alpha: float, out_dir: str | Path | None = None, *,
                       plan: Plan | None = None, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Write θ(α) as a model folder transformers loads as is: final/'s config, tokenizer, chat template and
    generation config, θ(α)'s weights in θ*'s dtypes, and interpolation.json (α, θ0, θ*, the notes). The folder
    appears complete or not at all (written under a temporary name, then renamed). Returns a summary."""
    from safetensors.torch import save_file

    alpha = check_alpha(alpha)
    plan = plan or plan_interpolation(run_dir)
    out = Path(out_dir) if out_dir is not None else plan.run_dir / "interpolated" / f"alpha-{alpha:g}"
    if out.exists() and any(out.iterdir()):
        raise ConfigError("--output", f"{out} already exists and is not empty; choose another folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for item in plan.final_dir.iterdir():  # everything but the weights: config, tokenizer, template, generation
            if item.is_file() and not (item.suffix == ".safetensors" or item.name in WEIGHT_FILES):
                shutil.copy2(item, tmp / item.name)
        shards = _shard_layout(plan.pairs, max_shard_bytes)
        names = ([WEIGHT_FILES[0]] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        weight_map, stream = {}, tensors(plan, alpha)
        for name, keys in zip(names, shards):
            chunk = {}
            for _ in keys:
                key, tensor = next(stream)
                chunk[key] = tensor.contiguous()
                weight_map[key] = name
            save_file(chunk, str(tmp / name), metadata={"format": "pt"})
            del chunk
        if len(shards) > 1:
            total = sum(p.nbytes for p in plan.pairs)
            (tmp / WEIGHT_FILES[1]).write_text(json.dumps({"metadata": {"total_size": total},
                                                           "weight_map": weight_map}, indent=2) + "\n")
        summary = {"alpha": alpha, "output": str(out), "run": str(plan.run_dir), "theta0": plan.base_source,
                   "theta_star": str(plan.final_dir), "tensors": len(plan.pairs), "shards": len(shards),
                   "notes": plan.notes}
        (tmp / "interpolation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _fsync_dir_files(tmp)
        if out.exists():
            out.rmdir()  # empty (checked above)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remember_export(plan.run_dir, summary)
    return summary


def _remember_export(run_dir: Path, summary: dict) -> None:
    """RUN/interpolation/exported.json: the α last exported and where (a window reopening the run shows it)."""
    from ftstudio.core.runs import atomic_write_text

    try:
        (run_dir / "interpolation").mkdir(exist_ok=True)
        atomic_write_text(run_dir / "interpolation" / "exported.json", json.dumps(summary, indent=2) + "\n")
    except OSError:
        pass  # a read-only run folder: the exported folder's own interpolation.json still says what it is


def _shard_layout(pairs: list[Pair], max_bytes: int) -> list[list[str]]:
    shards, size = [[]], 0
    for p in pairs:
        if shards[-1] and size + p.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p.key)
        size += p.nbytes
    return shards


def _fsync_dir_files(folder: Path) -> None:
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def apply_alpha(model, plan: Plan, alpha: float) -> None:
    """Set a model loaded from final/ to θ(α) in place, tensor by tensor (the sweep's way: one model in memory).
    Tied weights are shared tensors, so writing one name writes them all."""
    import torch

    sd = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    missing = []
    with torch.no_grad():
        for key, tensor in tensors(plan, alpha):
            target = _match(key, sd, prefix)
            if target is None or tuple(sd[target].shape) != tuple(tensor.shape):
                missing.append(key)
                continue
            sd[target].copy_(tensor)
    if missing:
        raise ModelError(f"the loaded model has no weight for {len(missing)} tensor(s) of final/ "
                         f"({', '.join(missing[:3])}); write each α with --alpha and evaluate the folders instead")


def save_new_params(run_dir: str | Path, model, names: list[str]) -> Path | None:
    """Keep the initialisation of the tensors the base model lacks (a classifier's new head) in the run folder:
    their θ0, which θ(α) interpolates from. Written once, at the start of a run (a resume keeps the first one)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / INIT_FILE
    sd = model.state_dict()
    if path.exists() or any(hasattr(sd.get(n), "full_tensor") for n in names):
        return None  # kept at the first start; FSDP's sharded tensors (several GPUs) are not gathered for it
    tensors_ = {n: sd[n].detach().to("cpu").contiguous().clone() for n in names if n in sd}
    if not tensors_:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors_, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path
