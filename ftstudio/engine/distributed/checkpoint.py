"""Checkpoints and the final export of an FSDP2 run, through ``torch.distributed.checkpoint`` (DCP).

A checkpoint keeps the single-device layout — ``checkpoints/step-N/`` with ``trainer_state.pt`` (step, the
global data position, scheduler, scaler, rank 0's RNG, the trainer's extras such as the rollback's LR factor) — but the weights and optimizer state are a DCP folder ``dcp/``
that every rank writes its own shards into (no rank ever holds the whole model), plus one RNG file per
rank. As on one device it is written under ``.tmp-step-N-dist`` and renamed only when complete, so a crash
leaves the previous checkpoint intact and :func:`~ftstudio.engine.train.checkpoint.latest_checkpoint` never sees
half a one. DCP reshards on load, and the export gathers a full state dict on rank 0 into a normal
``save_pretrained`` folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftstudio.engine.models.export import save_final
from ftstudio.core.atomic import disk_full_message, discard, fsync_dir as _fsync_dir, fsync_tree as _fsync_tree, is_disk_full
from ftstudio.engine.train.checkpoint import (STATE_FILE, CheckpointError, TrainState, prune_checkpoints, rng_state,
                                              set_rng_state)


def _optimizers(optimizer):
    """What DCP's state-dict helpers take: the optimizer, or the per-parameter ones of the step in backward."""
    return getattr(optimizer, "optimizers", None) or optimizer


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank()


def save_sharded(checkpoints_dir: str | Path, step: int, *, model, optimizer, scheduler, scaler=None,
                 micro_batch: int, keep_last: int = 2, group=None, extra: dict | None = None) -> Path:
    """Collective: every rank calls it at the same step. ``micro_batch`` is the global data position (micro-batches
    read by all ranks together); ``extra`` is what the trainer keeps beside it (the rollback's LR factor, ...)."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(checkpoints_dir)
    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}-dist"
    rank = _rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier(group=group)
    model_sd, optim_sd = get_state_dict(model, _optimizers(optimizer))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")
    dist.barrier(group=group)
    error = ""
    if rank == 0:
        try:
            state = {"step": step, "micro_batch": micro_batch, "rng": rng_state(), "extra": {**(extra or {}), "sharded": True, "global_position": True},
                     "world_size": dist.get_world_size(),
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
            torch.save(state, tmp / STATE_FILE)
            _fsync_tree(tmp)
            if final.exists():
                discard(final)   # renamed away first: no half-deleted step-N is ever visible
            os.rename(tmp, final)
            _fsync_dir(root)
            prune_checkpoints(root, keep_last)
        except Exception as e:  # noqa: BLE001 - OSError, or torch.save's RuntimeError on a full disk
            shutil.rmtree(tmp, ignore_errors=True)
            what = disk_full_message(root) if is_disk_full(e) else (getattr(e, "strerror", None) or e)
            error = f"could not write checkpoint {final}: {what}. The previous checkpoint is intact."
    # Every rank learns whether rank 0 succeeded, so all raise (or none does) and nobody waits forever.
    status = [error]
    dist.broadcast_object_list(status, src=0, group=group)
    if status[0]:
        raise CheckpointError(status[0])
    return final


def load_sharded(path: str | Path, *, model, optimizer=None, scheduler=None, scaler=None,
                 restore_rng: bool = True) -> TrainState:
    """Collective. Loads a checkpoint written by :func:`save_sharded` (any world size: DCP reshards)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / "dcp").is_dir():
        raise CheckpointError(f"{path} is a single-device checkpoint; resume it on one device "
                              f"(or export it and start a new multi-GPU run from the export)")
    try:
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        model_sd, optim_sd = get_state_dict(model, _optimizers(optimizer))
        sd = {"model": model_sd, "optim": optim_sd}
        dcp.load(sd, checkpoint_id=str(path / "dcp"))
        set_state_dict(model, _optimizers(optimizer), model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    except (OSError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        own = path / f"rng-rank{_rank()}.pt"
        set_rng_state(torch.load(own, weights_only=True) if own.exists() else state["rng"])
    extra = state.get("extra", {})
    position = state["micro_batch"]
    if not extra.get("global_position"):   # written before the position was global: it was rank 0's count
        position *= int(state.get("world_size", 1))
    return TrainState(step=state["step"], micro_batch=position, rng=state["rng"], extra=extra)


def export_full(model, tokenizer, final: Path, *, arch_name: str | None, group=None, **options) -> None:
    """Collective: gather the full weights onto rank 0's CPU and write a normal ``save_pretrained`` folder."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() == 0:
        save_final(model, tokenizer, final, state_dict=full, architecture=arch_name, **options)
    del full
    dist.barrier(group=group)
