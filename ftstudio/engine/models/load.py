"""Load a described model for full fine-tuning: model + tokenizer, every weight trainable.

Placement: by default the weights load on the CPU (in fp32 unless a dtype is asked for). Given a ``device``,
they load straight onto it in the asked dtype, so a GPU run never holds a copy of the model in host RAM: a local
safetensors checkpoint goes shard by shard (models/shards.py: one shard mapped at a time, so the host peak stays
near the largest shard); anything else (GGUF, hub, remote code, .bin, keys transformers must convert) goes through
``from_pretrained(device_map=...)``, which keeps every shard mapped until the load ends. ``LoadedModel.load_note``
says which loader ran and why.

Safety: weights come from safetensors where present; a pickle checkpoint (.bin) is opened only with
`weights_only=True` (we pass it explicitly; this module never calls torch.load); a model's own Python code runs
only when `ModelConfig.trust_remote_code` is on; local sources load with `local_files_only=True`, so they never
touch the network.
"""
from __future__ import annotations

from ftstudio.core.errors import ModelError
from ftstudio.engine.models import inspect
from ftstudio.engine.models.describe import LoadedModel, ModelInfo, check_task, describe_model

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def quiet_transformers() -> None:
    """transformers' load reports and progress bars would drown our own events; we report new heads ourselves."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def torch_dtype(dtype):
    """None → float32 (the CPU default and the master-weight precision); names or torch dtypes accepted."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ModelError(f"dtype '{dtype}' is not supported for loading: use float32, bfloat16 or float16")
    return getattr(torch, name)


def _source_kwargs(cfg, info: ModelInfo) -> dict:
    kw = {"trust_remote_code": bool(cfg.trust_remote_code)}
    if info.kind == "gguf":
        from pathlib import Path
        from ftstudio.engine.models.gguf import require_gguf

        require_gguf()
        kw["gguf_file"] = Path(info.path).name
    if info.kind == "hub":
        kw["revision"] = cfg.revision
    else:
        kw["local_files_only"] = True  # a local model never needs the network
    return kw


def _explain(e: Exception, info: ModelInfo, what: str) -> ModelError:
    """Turn a transformers/OS exception into a ModelError that says where and what to do."""
    import re

    where = info.path or info.source
    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}").strip()  # transformers colours its text
    if "Weights only load failed" in text or type(e).__name__ == "UnpicklingError":
        return ModelError(f"{where}: refused to open the pickle (.bin) weights: they hold more than plain tensors, "
                          "and unpickling them could run code. Use the model's safetensors weights instead.")
    if "custom code" in text or "trust_remote_code=True" in text:
        return ModelError(f"{where}: this model ships its own Python code (auto_map in config.json), which runs "
                          "only with trust_remote_code on. Turn it on only if you trust the model's author.")
    unknown = ("Unrecognized", "does not recognize", "not supported", "KeyError", "trust_remote_code")
    if any(u in text for u in unknown) and what == "model":
        return ModelError(
            f"{where}: transformers cannot build architecture '{info.architecture}' (model_type "
            f"'{info.model_type}') for this task ({text.splitlines()[0][:300]}). Upgrade transformers, pick "
            "another model, or, if the model ships its own code and you trust its author, turn on "
            "trust_remote_code.")
    return ModelError(f"{where}: cannot load the {what} ({text.splitlines()[0][:400]}).")


def missing_tokenizer(info: ModelInfo) -> str | None:
    """Why a model folder cannot be trained for want of its tokenizer (no tokenizer file beside the weights), or
    None: known from the folder alone, so the GUI and ``check_run`` say it before anything starts."""
    if info.kind in ("demo", "folder", "cache") and info.path and not inspect.has_tokenizer(info.path):
        return (f"{info.path}: no tokenizer files ({', '.join(inspect.TOKENIZER_FILES[:4])}, ...). Save the base "
                "model's tokenizer into this folder (tokenizer.save_pretrained(folder)).")
    return None


def _load_tokenizer(target: str, info: ModelInfo, kw: dict):
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoTokenizer

    missing = missing_tokenizer(info)
    if missing:
        raise ModelError(missing)
    try:
        tok = AutoTokenizer.from_pretrained(target, **kw)
    except Exception as e:  # OSError, ValueError, TypeError, ImportError (sentencepiece) ...
        raise _explain(e, info, "tokenizer") from e
    if isinstance(tok, bool) or not callable(tok):
        raise ModelError(f"{info.path or info.source}: the tokenizer files could not be read as a tokenizer.")
    return tok


def prepare_tokenizer(tok) -> None:
    """Batches need a pad token: reuse EOS (the usual choice; padded positions are masked), else add one."""
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            tok.add_special_tokens({"pad_token": "[PAD]"})
    tok.padding_side = "right"  # loss masks and classifier pooling both assume right padding


def _ensure_pad(tok, model) -> str:
    """A pad token, and an embedding with a row for every token id the tokenizer makes; says when rows were added."""
    had_pad = tok.pad_token is not None
    prepare_tokenizer(tok)
    emb = model.get_input_embeddings()
    note = ""
    if emb is not None and len(tok) > emb.weight.shape[0]:  # a pad token was added, or the tokenizer has more ids
        rows = emb.weight.shape[0]
        extra = [t for t, i in sorted(tok.get_vocab().items(), key=lambda x: x[1]) if i >= rows]
        model.resize_token_embeddings(len(tok))
        why = "a pad token was added" if not had_pad and extra == [tok.pad_token] else \
            f"the tokenizer has {len(tok) - rows} token ids beyond it ({', '.join(map(repr, extra[:4]))})"
        note = (f"The embedding grew from {rows} to {len(tok)} rows ({why}): the new rows start random and train; "
                "final/ keeps the larger size")
    model.config.pad_token_id = tok.pad_token_id
    return note


def _forget_gguf_quantization(model) -> None:
    """transformers de-quantises GGUF weights to plain floats but keeps a GGUF "quantizer" on the model, which
    makes save_pretrained refuse to export. After fine-tuning nothing of the GGUF encoding is left: drop it,
    so final/ is an ordinary safetensors folder."""
    model.hf_quantizer = None
    for holder in (model, model.config):
        for attr in ("quantization_config", "is_quantized", "quantization_method"):
            if attr in getattr(holder, "__dict__", {}):
                try:
                    delattr(holder, attr)
                except AttributeError:
                    pass


def load_tokenizer(cfg):
    """The tokenizer of cfg.source (a ModelConfig), with a pad token, without loading the weights."""
    info = describe_model(cfg.source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    tok = _load_tokenizer(info.load_path, info, _source_kwargs(cfg, info))
    prepare_tokenizer(tok)
    return tok


def _make_trainable(model, where: str) -> None:
    """Full fine-tuning: every parameter trains. Unfreeze what a checkpoint froze; refuse what cannot train."""
    stuck = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            try:
                p.requires_grad_(True)
            except RuntimeError:  # integer (quantized) tensors cannot carry gradients
                stuck.append(f"{name} ({p.dtype})")
    stuck += [n for n, p in model.named_parameters() if not p.requires_grad and n not in stuck]
    if stuck:
        raise ModelError(f"{where}: {len(stuck)} parameters cannot be trained ({', '.join(stuck[:5])}...): "
                         "full fine-tuning needs floating-point weights. Use a non-quantized model.")


def _model_kwargs(task: str, num_labels, id2label, info: ModelInfo) -> dict:
    if task != "classification":
        return {}
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in dict(id2label).items()}
        if num_labels is not None and num_labels != len(id2label):
            raise ModelError(f"num_labels={num_labels} but id2label has {len(id2label)} labels")
        num_labels = len(id2label)
    elif num_labels is not None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if num_labels is None:
        return {"ignore_mismatched_sizes": True}
    if num_labels < 1:
        raise ModelError(f"a classifier needs at least one label (got num_labels={num_labels})")
    # In the config so that the exported model carries the label names.
    return {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
            "ignore_mismatched_sizes": True}  # a head for other labels is replaced, not an error


def load_target(device: str, param_dtype, gpus: int = 1) -> dict:
    """The ``device``/``dtype`` keywords of :func:`load_model` for a trainer run: one CUDA device loads in the
    training dtype straight onto the GPU; the CPU (today's path) and FSDP's ranks (they shard a host copy)
    load on the host as before."""
    if not str(device).startswith("cuda") or gpus > 1:
        return {}
    return {"device": str(device), "dtype": param_dtype}


def load_model(cfg, *, task: str, num_labels: int | None = None, id2label: dict[int, str] | None = None,
               dtype=None, tokenizer=None, device: str | None = None) -> LoadedModel:
    """Load cfg.source (a ModelConfig) for full fine-tuning: on the CPU, or with ``device`` straight onto that
    device (no host copy of the model; see the module docstring). Pass the ``tokenizer`` already loaded by
    :func:`load_tokenizer` to reuse it (the data was tokenised with it)."""
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    info = describe_model(cfg.source, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)
    check_task(task, info)
    kw = _source_kwargs(cfg, info)
    target = info.load_path
    tok = tokenizer if tokenizer is not None else _load_tokenizer(target, info, kw)
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    model_kw = _model_kwargs(task, num_labels, id2label, info)
    if str(device).startswith("meta"):
        model, new, note = _meta_skeleton(auto, target, info, dtype, kw, model_kw)
    else:
        model, new, note = _load_by_shards(auto, cfg, info, device, dtype, model_kw)
    if model is None:
        try:
            placed = {"device_map": {"": str(device)}} if device is not None else {}
            model, loading = auto.from_pretrained(target, dtype=torch_dtype(dtype), weights_only=True,
                                                  output_loading_info=True, **kw, **placed, **model_kw)
        except ModelError:
            raise
        except Exception as e:
            raise _explain(e, info, "model") from e
        new = sorted(set(loading.get("missing_keys", [])) | {m[0] if isinstance(m, tuple) else m
                                                              for m in loading.get("mismatched_keys", [])})
    if info.kind == "gguf":
        _forget_gguf_quantization(model)
    grown = _ensure_pad(tok, model)
    _make_trainable(model, info.path or info.source)
    return LoadedModel(model=model, tokenizer=tok, task=task, info=info, new_params=new, load_note=note,
                       notes=[grown] if grown else [])


def _meta_skeleton(auto, target: str, info: ModelInfo, dtype, kw: dict, model_kw: dict):
    """The model's modules on the meta device (shapes and dtypes, no storage): what planning and FSDP's
    non-zero ranks need. Built from the config under ``torch.device("meta")``, not with
    ``from_pretrained(device_map={"": "meta"})``: transformers 5.25 refuses "meta" as a device_map target, and
    reading weights only to drop them was wasted work on any version."""
    import torch
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoConfig

    config_kw = {k: v for k, v in model_kw.items() if k != "ignore_mismatched_sizes"}
    try:
        config = AutoConfig.from_pretrained(target, **kw, **config_kw)
        with torch.device("meta"):
            model = auto.from_config(config, dtype=torch_dtype(dtype),
                                     trust_remote_code=kw.get("trust_remote_code", False))
    except ModelError:
        raise
    except Exception as e:
        raise _explain(e, info, "model") from e
    return model, [], "Weights: none read (a meta-device skeleton: shapes and dtypes only)"


def _load_by_shards(auto, cfg, info: ModelInfo, device, dtype, model_kw: dict):
    """(model, new params, note) from the shard-by-shard loader (models/shards.py), or (None, None, note) when
    transformers' from_pretrained must load it; the note says which and why."""
    from ftstudio.engine.models import shards

    where = f"onto {device}" if device is not None else "on the CPU"
    why = shards.not_applicable(info, bool(cfg.trust_remote_code), device)
    if why is None:
        config_kw = {k: v for k, v in model_kw.items() if k != "ignore_mismatched_sizes"}
        try:
            return shards.load_by_shards(auto, info.path, dtype=torch_dtype(dtype), device=str(device),
                                         config_kwargs=config_kw, head_may_differ="ignore_mismatched_sizes" in model_kw)
        except shards.Fallback as e:
            return None, None, f"Weights: loaded {where} by transformers' from_pretrained ({e})"
        except ModelError:
            raise
        except Exception as e:
            raise _explain(e, info, "model") from e
    if device is None:
        return None, None, f"Weights: loaded {where} by transformers' from_pretrained"
    return None, None, f"Weights: loaded {where} by transformers' from_pretrained ({why})"
