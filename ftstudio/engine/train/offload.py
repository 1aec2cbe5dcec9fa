"""Activation checkpointing with the saved block inputs offloaded to pinned CPU memory.

With activation checkpointing each block keeps only its input for the backward pass; reentrant checkpointing
saves that input through ``ctx.save_for_backward``, which ``torch.autograd.graph.save_on_cpu(pin_memory=True)``
moves to pinned CPU memory and brings back (asynchronously) when the block is recomputed. Non-reentrant
checkpointing keeps its inputs alive in a closure on the GPU, so offload switches checkpointing to the
reentrant variant (:func:`checkpoint_kwargs`). :func:`enable` turns checkpointing on as the trainer wants it,
for every block or for the first ``memory.checkpoint_blocks`` only.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch


def checkpoint_kwargs(offload: bool) -> dict:
    """``gradient_checkpointing_kwargs`` for HF models: reentrant when the saved block inputs are offloaded
    (only ``ctx.save_for_backward`` passes through the saved-tensor hooks that move them to the CPU)."""
    return {"use_reentrant": bool(offload)}


def offload_context(enabled: bool, device: str = "cuda"):
    """Wrap the forward only: every tensor it saves outside a non-reentrant checkpoint (the block inputs of
    reentrant checkpointing, the final norm's input) lives in (pinned) CPU memory until backward needs it.
    The backward's recompute must run outside: compiled blocks check the strides of what they saved, and
    the CPU copies are contiguous."""
    if not enabled:
        return nullcontext()
    pin = device.startswith("cuda") and torch.cuda.is_available()
    return torch.autograd.graph.save_on_cpu(pin_memory=pin)


def enable(model, memory) -> str:
    """Checkpoint the model's blocks (all, or the first ``memory.checkpoint_blocks``: the others keep their
    activations, which the memory budget's chooser plans to fit); returns the log line saying which."""
    from ftstudio.engine.models.structure import checkpoint_blocks, find_block_list

    checkpoint_blocks(model, checkpoint_kwargs(memory.offload_activations))
    blocks = find_block_list(model)
    n = len(blocks) if blocks is not None else 0
    k = memory.checkpoint_blocks
    if not k:
        return "Activation checkpointing: every block"
    if k >= n:
        return (f"Activation checkpointing: every block (checkpoint_blocks {k}, and the model has "
                f"{n or 'no list of'} blocks)")
    if any(not hasattr(b, "gradient_checkpointing") for b in blocks):
        return (f"Activation checkpointing: every block (checkpoint_blocks {k}: this model's blocks do not take a "
                "per-block switch)")
    for block in list(blocks)[k:]:
        block.gradient_checkpointing = False    # transformers' GradientCheckpointingLayer reads it per call
    return f"Activation checkpointing: the first {k} of {n} blocks; the last {n - k} keep their activations"
