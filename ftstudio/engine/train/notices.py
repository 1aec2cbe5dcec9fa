"""What changes the training without the user having asked, said as warnings in ``train``'s output (so also under
``--quiet``, which hides progress only): the run trains something other than the user may think unless told.

- a tokenizer without an end-of-sequence token, for rows whose answers should end (prompt/completion, chat);
- the fallback chat template (the tokenizer has none), saved with the export;
- a model that ships its own code (``auto_map``) trained as the stock transformers class (trust_remote_code off);
- parameters initialised at random (missing from the checkpoint) and an embedding grown for the tokenizer.
"""
from __future__ import annotations

ANSWER_FORMATS = ("prompt-completion", "alpaca", "chat", "sharegpt")
CHAT_FORMATS = ("chat", "sharegpt")


def training_notices(cfg, info, tokenizer, data_format: str, task: str) -> list[str]:
    """Lines known before the weights load."""
    from ftstudio.engine.data.render import has_chat_template, uses_chat_template

    out = []
    if task == "causal-lm" and data_format in ANSWER_FORMATS and getattr(tokenizer, "eos_token", None) is None:
        out.append("The tokenizer has no end-of-sequence token: answers are trained without an end marker, so the "
                   "model is not taught where to stop (add an eos_token to the tokenizer to teach it)")
    chat = data_format in CHAT_FORMATS or (data_format in ("alpaca", "prompt-completion")
                                           and uses_chat_template(tokenizer, cfg.data.instruction_format))
    if task == "causal-lm" and chat and not has_chat_template(tokenizer):
        out.append("The tokenizer has no chat template: rows are rendered with FT Studio's fallback template "
                   "(<|role|> headers, EOS after each turn), which is saved with the export")
    auto_map = (info.config or {}).get("auto_map")
    if auto_map and not cfg.model.trust_remote_code:
        out.append(f"{cfg.model.source} ships its own model code (auto_map in config.json), which is not run "
                   f"(trust_remote_code is off): the stock transformers class for '{info.model_type}' trains "
                   "instead, and may differ from the author's")
    return out


def loaded_notices(loaded, run_dir=None, cfg=None, export_dtype=None) -> list[str]:
    """Lines about the loaded weights: parameters that started random, an embedding that grew, and (given the
    run folder) a disk too small for what the run writes at its end."""
    out = list(getattr(loaded, "notes", []) or [])
    new = loaded.new_params or []
    if new:
        shown = ", ".join(new[:6]) + (f" and {len(new) - 6} more" if len(new) > 6 else "")
        out.append(f"{len(new)} parameter tensor{'s' if len(new) > 1 else ''} not in the checkpoint, initialised at "
                   f"random: {shown}")
    if run_dir is not None and cfg is not None:
        out += space_notices(loaded.model, run_dir, cfg, export_dtype)
    return out


def space_notices(model, run_dir, cfg, export_dtype=None) -> list[str]:
    """The output disk cannot hold what the run writes at its end (final/, beside the checkpoint that keeps its
    weights safe until final/ is complete): said before the training, not after hours of it. A lower bound:
    periodic checkpoints add the optimizer's state."""
    from ftstudio.core.atomic import free_bytes, gb

    free = free_bytes(run_dir)
    params = list(model.parameters())
    weights = sum(p.numel() * p.element_size() for p in params)
    final = sum(p.numel() for p in params) * getattr(export_dtype, "itemsize", 4) if cfg.checkpoint.export else 0
    ckpt = weights if cfg.checkpoint.export or cfg.checkpoint.checkpoint_every else 0
    if free is None or free >= final + ckpt:
        return []
    parts = " and ".join(x for x in (f"final/ {gb(final)}" if final else "", f"a checkpoint {gb(ckpt)}" if ckpt
                                      else "") if x)
    return [f"{run_dir} has {gb(free)} free on its disk, less than this run writes at its end ({parts}, at "
            "least): free some space or choose another --output, or the run ends with a full disk"]
