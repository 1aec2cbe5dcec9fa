"""The export gate: after ``final/`` is written, it is loaded again in a fresh process with stock transformers and
compared with what was trained, so a broken export is never reported as done.

A fresh process, not the training one: the training process may have patched model classes (fused kernels,
attention registrations, trusted remote code already imported) that a user's ``from_pretrained`` will not have.
What is compared:
- the tensors on disk (names, shapes) against the model's own state dict as ``save_pretrained`` writes it: tied
  weights may be saved once (a key missing on disk is accepted only where the model ties it to one that is there),
  and transformers renames or splits some tensors on save (GPT-NeoX's ``lm_head`` is ``embed_out`` on disk, an
  MoE's fused experts are saved one expert at a time), the reverse of what ``from_pretrained`` does on load;
- ``from_pretrained`` loads the folder with no missing or unexpected keys;
- a logits probe (one-process runs of models up to 2B parameters, where the trained model is at hand and a
  float32 copy fits on the host; larger or sharded models are built on the meta device instead): the reloaded model's logits on a few
  tokens agree with the trained model's (cosine > 0.99 and the same top-1 token at ≥ 90 % of positions; bf16
  arithmetic on another device moves logits by ~1e-2, a wrong or missing tensor moves them entirely).
``FTSTUDIO_EXPORT_GATE=0`` turns it off (the test suite does, except in the gate's own tests, to save a
process start per export).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from ftstudio.core.errors import ModelError

COSINE_MIN = 0.99
TOP1_MIN = 0.9
TIMEOUT_S = 1800
PROBE_MAX_PARAMS = 2_000_000_000  # 8 GB in float32


def enabled() -> bool:
    return os.environ.get("FTSTUDIO_EXPORT_GATE", "1") != "0"


def probe_ids(tokenizer, n: int = 16) -> list[int]:
    text = "The quick brown fox jumps over the lazy dog. 1234 Hello, world!"
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:n]
    return ids or [0]


def reference_logits(model, ids: list[int]):
    """The trained model's logits on ``ids``, as float32 on the CPU."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids], device=device))
    finally:
        model.train(was_training)
    return out.logits.detach().float().cpu()


def _disk_shapes(final: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in sorted(final.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except Exception as e:  # noqa: BLE001 - SafetensorError and OSError alike: the file is not whole
            raise ModelError(f"{f}: the exported weights file is damaged or incomplete ({e})") from None
    return shapes


def saved_shapes(model, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """{name on disk: shape} for tensors of these in-memory names and shapes, as ``save_pretrained`` writes them:
    transformers (5.x) reverts the model's load-time weight conversions on save (renames, fused MoE experts split
    per expert). Computed on meta tensors, so no memory is copied; a transformers without conversions, or a model
    it has none for, keeps the names as they are."""
    try:
        import torch
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return dict(shapes)
    metas = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        reverted = revert_weight_conversion(model, metas)
    except Exception:  # noqa: BLE001 - a conversion that cannot run on meta tensors: compare the names as they are
        return dict(shapes)
    return {k: tuple(v.shape) for k, v in reverted.items()}


def _child(final: str, ids: list[int] | None, conn) -> None:
    """Runs in the fresh process: load with stock transformers, report keys, shapes and logits. Without ``ids``
    (a model too large to load twice) the model is only built on the meta device and its keys compared."""
    try:
        import torch
        from ftstudio.engine.hf_imports import ready
        ready()      # loaded under one lock: threads (engine/hf_imports.py)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()   # the run's own output says what happened; no second progress bar
        hf_logging.disable_progress_bar()
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        config = AutoConfig.from_pretrained(final, local_files_only=True)
        arch = (config.architectures or [""])[0]
        auto = AutoModelForSequenceClassification if arch.endswith("ForSequenceClassification") \
            else AutoModelForCausalLM
        if ids is None:
            with torch.device("meta"):
                built = auto.from_config(config)
            keys = set(saved_shapes(built, {k: tuple(v.shape) for k, v in built.state_dict().items()}))
            disk = set(_disk_shapes(Path(final)))
            tied = set(getattr(built, "_tied_weights_keys", None) or ())
            out = {"missing": sorted(k for k in keys - disk if not any(k.endswith(t) for t in tied)),
                   "unexpected": sorted(disk - keys), "mismatched": [], "logits": None}
            conn.send(("ok", out))
            return
        model, info = auto.from_pretrained(final, local_files_only=True, dtype=torch.float32,
                                           output_loading_info=True)
        out = {"missing": sorted(info.get("missing_keys", [])), "unexpected": sorted(info.get("unexpected_keys", [])),
               "mismatched": [str(m) for m in info.get("mismatched_keys", [])], "logits": None}
        if ids is not None:
            with torch.no_grad():
                out["logits"] = model(input_ids=torch.tensor([ids])).logits.float().tolist()
        conn.send(("ok", out))
    except Exception as e:  # noqa: BLE001 - everything the child meets is the gate's answer
        conn.send(("error", f"{type(e).__name__}: {str(e)[:500]}"))
    finally:
        conn.close()


def _reload_in_fresh_process(final: Path, ids: list[int] | None) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(str(final), ids, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(TIMEOUT_S):
            raise ModelError(f"{final}: the export check did not answer in {TIMEOUT_S} s")
        status, payload = parent.recv()
    except EOFError:
        raise ModelError(f"{final}: the process that reloads the export died (exit code {proc.exitcode})") from None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    if status != "ok":
        raise ModelError(f"{final}: the exported model does not load with transformers ({payload})")
    return payload


def _tied_names(model) -> dict[str, str]:
    """{name: the name it shares storage with} for parameters the model ties (saved once on disk)."""
    seen, ties = {}, {}
    for name, p in model.state_dict(keep_vars=True).items():
        key = (p.data_ptr(), tuple(p.shape), p.device.type) if p.device.type != "meta" else None
        if key is None:
            continue
        if key in seen:
            ties[name] = seen[key]
        else:
            seen[key] = name
    return ties


def check_export(final: str | Path, model, tokenizer, *, state_dict: dict | None = None) -> str:
    """Reload ``final`` in a fresh process and compare; a one-line summary, or a ModelError saying what is wrong.
    ``state_dict``: the gathered weights of a sharded model (no logits probe then)."""
    final = Path(final)
    expected = {k: tuple(v.shape) for k, v in (state_dict if state_dict is not None else model.state_dict()).items()}
    disk = _disk_shapes(final)
    ties = _tied_names(model) if state_dict is None else {}
    declared = getattr(model, "_tied_weights_keys", None) or ()
    declared = set(declared) if not isinstance(declared, dict) else set(declared)
    # Tied tensors may be saved once, under either name; the rest must all be there, under the names on disk.
    may_lack = {k for k in expected if k in ties or any(k == d or k.endswith("." + d) for d in declared)}
    must = saved_shapes(model, {k: s for k, s in expected.items() if k not in may_lack})
    may = saved_shapes(model, {k: s for k, s in expected.items() if k in may_lack})
    missing = [k for k in must if k not in disk]
    wrong = [f"{k} {disk[k]} vs {s}" for k, s in {**may, **must}.items() if k in disk and disk[k] != s]
    extra = [k for k in disk if k not in must and k not in may]
    if missing or wrong or extra:
        parts = [f"{len(missing)} tensors missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(wrong)} with other shapes ({'; '.join(wrong[:2])})" if wrong else "",
                 f"{len(extra)} not in the model ({', '.join(extra[:3])})" if extra else ""]
        raise ModelError(f"{final}: the export is not the trained model: " + ", ".join(p for p in parts if p))
    params = sum(math.prod(shape) for shape in disk.values())
    # The probe loads a second, float32 copy on the host: only where that is small (the trainer's model stays).
    ids = probe_ids(tokenizer) if state_dict is None and params <= PROBE_MAX_PARAMS else None
    ref = reference_logits(model, ids) if ids is not None else None
    got = _reload_in_fresh_process(final, ids)
    if got["missing"] or got["unexpected"] or got["mismatched"]:
        raise ModelError(f"{final}: transformers reloads the export with missing {got['missing'][:3]}, "
                         f"unexpected {got['unexpected'][:3]}, mismatched {got['mismatched'][:2]} weights")
    summary = (f"export check: {len(disk)} tensors reloaded in a fresh process" if ids is not None else
               f"export check: {len(disk)} tensors match the architecture built in a fresh process (no logits "
               f"probe: {'sharded weights' if state_dict is not None else f'{params / 1e9:.1f}B parameters'})")
    if ref is not None:
        import torch

        new = torch.tensor(got["logits"])
        a, b = ref.reshape(-1, ref.shape[-1]), new.reshape(-1, new.shape[-1])
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()
        top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        if cos < COSINE_MIN or top1 < TOP1_MIN:
            raise ModelError(f"{final}: the reloaded export answers differently from the trained model (logits "
                             f"cosine {cos:.4f}, same top-1 token at {top1:.0%} of {len(a)} positions)")
        summary += f", logits agree (cosine ≥ {cos:.4f}, top-1 {top1:.0%} of {len(a)} positions)"
    return summary
