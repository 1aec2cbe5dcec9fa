"""The fine-tuned model as a folder that ``transformers`` loads as is (``save_pretrained``: safetensors weights,
config.json, the tokenizer), written by the single-device trainer and by rank 0 of an FSDP run alike.

A chat model must stop where its turn ends once it is used with ``generate``, so ``final/`` carries what that
needs: the chat template it was trained with (the fallback one too, when the tokenizer had none), and a
``generation_config.json`` whose ``eos_token_id`` lists every end-of-turn token of that template beside the
tokenizer's EOS. Weights are written in the dtype the base model was stored in unless asked otherwise, and the
KV cache that training turned off is turned back on.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftstudio.core.atomic import atomic_dir

_DTYPES = ("float32", "bfloat16", "float16")


def stop_token_ids(tokenizer) -> list[int]:
    """The tokenizer's EOS and the token(s) the chat template writes to end an assistant turn, deduplicated."""
    from ftstudio.engine.data.render import end_of_turn

    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    if getattr(tokenizer, "chat_template", None):
        eot = end_of_turn(tokenizer)
        if eot:
            # A special token of its own (<|im_end|>, <|eot_id|>, <end_of_turn>), or the text of one.
            tid = tokenizer.convert_tokens_to_ids(eot)
            if tid is None or tid == getattr(tokenizer, "unk_token_id", None):
                enc = tokenizer(eot, add_special_tokens=False)["input_ids"]
                tid = enc[0] if len(enc) == 1 else None
            if tid is not None and int(tid) not in ids:
                ids.append(int(tid))
    return ids


def export_dtype(choice: str, stored: str | None):
    """The torch dtype of the exported weights: ``choice``, or for "auto" the base model's stored dtype."""
    import torch

    name = choice if choice != "auto" else (stored if stored in _DTYPES else "float32")
    return getattr(torch, name)


def export_options(cfg, stored_dtype: str | None, model, data_format: str, tokenizer) -> dict:
    """What final/ needs from a run's setup (before training changes the model): the weights' dtype, the
    KV-cache setting, and the chat template the rows were rendered with when the tokenizer has none."""
    from ftstudio.engine.data.render import FALLBACK_CHAT_TEMPLATE, has_chat_template, uses_chat_template

    chat = data_format in ("chat", "sharegpt") or (
        data_format in ("alpaca", "prompt-completion") and uses_chat_template(tokenizer, cfg.data.instruction_format))
    return {"dtype": export_dtype(cfg.checkpoint.export_dtype, stored_dtype),
            "use_cache": getattr(model.config, "use_cache", None),
            "chat_template": FALLBACK_CHAT_TEMPLATE if chat and not has_chat_template(tokenizer) else None}


def save_final(model, tokenizer, final: Path, *, state_dict: dict | None = None,
               architecture: str | None = None, chat_template: str | None = None, dtype=None,
               use_cache: bool | None = None) -> Path:
    """Write ``final/``.

    ``state_dict``: the full weights when the model's own are sharded (FSDP gathers them first);
    ``architecture``: the class name to record when the model's class was swapped (FSDP's wrapper);
    ``chat_template``: the template the rows were rendered with, saved with the tokenizer when it has none;
    ``dtype``: the weights' dtype in the folder (the model itself is cast only when it already is on the host
    or no copy is given); ``use_cache``: the base model's setting, restored in config.json.
    """
    final = Path(final)
    if dtype is not None:
        if state_dict is not None:
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        else:
            model.to(dtype)  # the run is over: casting in place costs no second copy of the weights
    if use_cache is not None and hasattr(model.config, "use_cache"):
        model.config.use_cache = use_cache
    if chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = chat_template
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        stops = stop_token_ids(tokenizer)
        if stops:
            gen.eos_token_id = stops if len(stops) > 1 else stops[0]
        if getattr(tokenizer, "pad_token_id", None) is not None:
            gen.pad_token_id = tokenizer.pad_token_id
    from ftstudio.engine.models import gate
    from ftstudio.engine.models.card import write_model_card

    # Written under a temporary name, synced and renamed (core/atomic.py): a final/ that exists is complete, and a
    # kill or a full disk mid-export leaves no folder that looks like a model but holds half its weights.
    final.parent.mkdir(parents=True, exist_ok=True)   # the trainer checks first that its run folder is intact
    with atomic_dir(final) as tmp:
        # 5 GB shards (as hub checkpoints are): a model on the GPU reaches the host one shard at a time.
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        if architecture:
            # fully_shard swaps the class for "FSDP<Name>"; the folder must name the real architecture.
            cfg_path = tmp / "config.json"
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg["architectures"] = [architecture]
            cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # Reloaded in a fresh process and compared with the trained model before the rename: a broken export
        # raises here and never becomes final/.
        checked = gate.check_export(tmp, model, tokenizer, state_dict=state_dict) if gate.enabled() else None
        # README.md: the Hub's model card, from the run folder around final/ when there is one
        write_model_card(tmp, run_dir=final.parent, check=checked, location=final)
        _fault_pause()
    return final


def _fault_pause() -> None:
    """Test hook: FTSTUDIO_FAULT_SLOW_EXPORT=<seconds> sleeps with final/ written but not yet renamed into place,
    so a test can kill the export mid-way (tests/test_faults_*.py). Unset in normal use."""
    import os
    import time
    delay = os.environ.get("FTSTUDIO_FAULT_SLOW_EXPORT")
    if delay:
        time.sleep(float(delay))
