"""The structure of any Hugging Face model: its stack(s) of repeated transformer blocks, and its parameters
grouped by depth (what ULMFiT's layer rates, the drift monitor, compiling and FSDP sharding all need).

Layer groups (bottom → top), found for any Hugging Face model by :func:`layer_groups`:

    embeddings   every parameter registered before the first transformer block (token and position
                 embeddings, the embedding LayerNorm, ...). A tied output matrix is the same tensor as
                 the token embedding, so it lives here too.
    layer.0 …    one group per block of the model's layer list (the largest ``nn.ModuleList`` whose
    layer.{n-1}  children are all the same class: ``model.layers``, ``transformer.h``,
                 ``bert.encoder.layer``, …; an encoder-decoder's two stacks are chained encoder first)
    head         every parameter registered after the last block (final norm, LM head, pooler, classifier)
"""
from __future__ import annotations

from torch import nn


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


def checkpoint_blocks(model, kwargs: dict) -> None:
    """Turn on transformers' activation checkpointing with ``kwargs`` for ``torch.utils.checkpoint``: through
    ``activation_checkpointing_enable`` where transformers has it (5.2x; the old name warns that it goes in v6),
    else ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
