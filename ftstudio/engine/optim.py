"""The optimizer and its parameter groups: decoupled weight decay and ULMFiT's discriminative rates.

Layer groups (bottom → top), found for any Hugging Face model by :func:`layer_groups`:

    embeddings   every parameter registered before the first transformer block (token and position
                 embeddings, the embedding LayerNorm, ...). A tied output matrix is the same tensor as
                 the token embedding, so it lives here too.
    layer.0 …    one group per block of the model's layer list (the largest ``nn.ModuleList`` whose
    layer.{n-1}  children are all the same class: ``model.layers``, ``transformer.h``,
                 ``bert.encoder.layer``, …; an encoder-decoder's two stacks are chained encoder first)
    head         every parameter registered after the last block (final norm, LM head, pooler, classifier)

Discriminative learning rates (Howard & Ruder, 2018, ULMFiT): the group at depth ``l`` counted from the
top trains at ``lr · ξ^-l``. Depths: head l=0 (the full ``lr``), the last block l=1, …, block 0 l=n,
embeddings l=n+1. Depth counts only groups that hold parameters, so a model with no head parameters
(a base encoder with tied weights and no final norm) gives its last block l=0. With ξ=2.6 the
embeddings of a 30-block model train about 1e-13 times slower than the head: effectively frozen,
which is what the formula asks for; pick a smaller ξ (1.1–1.3) for deep models.

Weight decay (decoupled, AdamW-style) is NOT applied to:
  * biases and every other 0-/1-D parameter (LayerNorm/RMSNorm scales, scalars);
  * parameters of any module whose class name contains "Norm" (LayerNorm, RMSNorm, GroupNorm, …,
    including model-specific classes such as LlamaRMSNorm or T5LayerNorm);
  * embedding tables (``nn.Embedding``: token AND learned position embeddings). A row of a token
    that never occurs in the fine-tuning data gets no gradient, so decay would only shrink it toward
    zero: forgetting with nothing learned in exchange.
Decay pulls weights toward zero; L2-SP (engine/regularize.py) pulls them toward θ0. They are different.
"""
from __future__ import annotations

import re
import torch
from torch import nn

from ftstudio.core.config import OptimConfig
from ftstudio.core.errors import ConfigError

_NORM_NAME = re.compile(r"norm", re.IGNORECASE)


# -- finding the layer list ------------------------------------------------------------------------
def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's stacks of repeated blocks, in registration order.

    A candidate is an ``nn.ModuleList`` with ≥ 2 children of one class that hold parameters. The
    largest wins; other candidates are kept only if they are not nested in (or around) a kept one and
    hold at least a fifth of the largest's parameters: that keeps both stacks of an encoder-decoder
    while dropping MoE expert lists (nested) and small auxiliary lists.
    """
    candidates = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2:
            kinds = {type(child) for child in mod}
            size = _n_params(mod)
            if len(kinds) == 1 and size > 0:
                candidates.append((name, mod, size))
    if not candidates:
        return []
    candidates.sort(key=lambda c: -c[2])
    largest = candidates[0][2]
    kept: list[tuple[str, nn.ModuleList]] = []
    for name, mod, size in candidates:
        if size * 5 < largest:
            break
        nested = any(name.startswith(k + ".") or k.startswith(name + ".") for k, _ in kept)
        if not nested:
            kept.append((name, mod))
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(kept, key=lambda c: order[c[0]])


def find_block_list(model: nn.Module) -> nn.ModuleList | None:
    """The model's main stack of transformer blocks (the largest repeated-block ModuleList), or None."""
    stacks = _block_lists(model)
    return max(stacks, key=lambda c: _n_params(c[1]))[1] if stacks else None


def layer_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Trainable parameter names grouped bottom (embeddings) → top (head); empty groups are left out.

    A model without any repeated-block list (not a transformer) gives one group, "model".
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    stacks = _block_lists(model)
    if not stacks:
        return [("model", names)] if names else []
    block_of: list[tuple[str, str]] = []  # (prefix of one block, group name)
    idx = 0
    for stack_name, stack in stacks:
        for i in range(len(stack)):
            block_of.append((f"{stack_name}.{i}." if stack_name else f"{i}.", f"layer.{idx}"))
            idx += 1
    groups: dict[str, list[str]] = {"embeddings": []}
    groups.update({g: [] for _, g in block_of})
    groups["head"] = []
    last_block = block_of[-1][1]
    current = "embeddings"  # the group of the nearest block below (embeddings before the first block)
    for n in names:
        hit = next((g for prefix, g in block_of if n.startswith(prefix)), None)
        if hit is not None:
            current = hit
            groups[hit].append(n)
        elif current == last_block or current == "head":
            current = "head"  # registered after the last block: final norm, LM head, pooler, classifier
            groups["head"].append(n)
        else:  # before the first block, or between two stacks (an encoder's final norm goes with the block below)
            groups[current].append(n)
    return [(g, ns) for g, ns in groups.items() if ns]


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Group name → depth from the top (head 0, last block 1, …, embeddings n+1)."""
    groups = [g for g, _ in layer_groups(model)]
    return {g: len(groups) - 1 - i for i, g in enumerate(groups)}


def layer_lr_scales(model: nn.Module, xi: float) -> dict[str, float]:
    """Group name (bottom → top) → learning-rate multiplier ξ^-l, for the GUI's bars."""
    if xi < 1.0:
        raise ConfigError("optim.layer_lr_decay", f"{xi!r} must be >= 1 (1 = the same rate everywhere)")
    return {g: float(xi) ** -d for g, d in layer_depths(model).items()}


# -- weight-decay exemptions -----------------------------------------------------------------------
def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: biases, norms, embeddings (see module docstring)."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        exempt_module = isinstance(mod, nn.Embedding) or bool(_NORM_NAME.search(type(mod).__name__))
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if exempt_module or p.ndim < 2 or p_name == "bias" or p_name.endswith("_bias"):
                out.add(full)
    return out


# -- the optimizer ---------------------------------------------------------------------------------
def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Torch param groups: per layer group (when ξ > 1) × {decay, no decay}; each with "name" and its peak "lr"."""
    params = dict(model.named_parameters())
    exempt = no_decay_names(model)
    if cfg.layer_lr_decay > 1.0:
        scales = layer_lr_scales(model, cfg.layer_lr_decay)
        buckets = [(g, scales[g], names) for g, names in layer_groups(model)]
    else:
        names = [n for n, p in params.items() if p.requires_grad]
        buckets = [("all", 1.0, names)]
    groups = []
    for g, scale, names in buckets:
        for decay in (True, False):
            chosen = [n for n in names if (n in exempt) != decay]
            if not chosen:
                continue
            groups.append({
                "params": [params[n] for n in chosen],
                "param_names": chosen,
                "name": g if decay else f"{g} (no decay)",
                "layer": g,
                "lr_scale": scale,
                "lr": cfg.lr * scale,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            })
    if not groups:
        raise ConfigError("optim.optimizer", "the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, device_type: str) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names over :func:`param_groups` (each group's "lr" is its peak)."""
    groups = param_groups(model, cfg)
    kind = cfg.optimizer
    if kind == "adamw":
        # fused: one CUDA kernel for the whole update; foreach: batched ops elsewhere (CPU, MPS).
        accel = {"fused": True} if device_type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay, **accel)
    if kind == "adamw8bit":
        if device_type != "cuda":
            raise ConfigError("optim.optimizer", "adamw8bit (bitsandbytes) needs a CUDA GPU; use adamw on "
                                                 f"{device_type}")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optim.optimizer", "adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                   weight_decay=cfg.weight_decay)
    if kind == "adafactor":
        from transformers.optimization import Adafactor
        # Our schedule sets the LR, so Adafactor's own relative step and parameter scaling are off.
        # beta1=None keeps no first moment: Adafactor's point is the memory it saves.
        return Adafactor(groups, lr=cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         beta1=None, weight_decay=cfg.weight_decay)
    if kind == "sgd":
        # torch's SGD adds weight decay to the gradient (coupled); with momentum this differs slightly
        # from AdamW's decoupled decay.
        accel = {"fused": True} if device_type == "cuda" else {"foreach": True}
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1, weight_decay=cfg.weight_decay, **accel)
    raise ConfigError("optim.optimizer", f"{kind!r} is not one of adamw, adamw8bit, adafactor, sgd")


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """One row per param group for display: name, peak lr, weight decay, parameter count."""
    return [{"name": g.get("name", str(i)), "lr": g["lr"], "weight_decay": g.get("weight_decay", 0.0),
             "params": sum(p.numel() for p in g["params"])} for i, g in enumerate(optimizer.param_groups)]
