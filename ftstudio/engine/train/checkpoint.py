"""Crash-safe, resumable checkpoints.

A checkpoint is a folder ``checkpoints/step-N/`` holding the model weights (safetensors), the optimizer,
scheduler and grad-scaler states, the RNG states and the data position. It is written under a temporary
name, every file is fsync'ed, and only then is the folder renamed to ``step-N``: a rename is atomic, so a
crash (even SIGKILL mid-write) leaves either the complete new checkpoint or none, and the previous one
is untouched. Older checkpoints are pruned only after the new one is in place.

Deleting is made atomic the same way (rename to a hidden ``.trash-`` name, then remove), so a folder
named ``step-N`` is always complete. Leftover ``.tmp-``/``.trash-`` folders of a killed process are
removed at the next save.

Everything loads with ``torch.load(weights_only=True)``: no pickle code runs from a checkpoint.

Test hook: the environment variable ``FTSTUDIO_FAULT_SLOW_CHECKPOINT=<seconds>`` sleeps that long after
each file of a checkpoint is written (and before the final rename), so a test can kill the process in
the middle of a write (tests/test_reliability_kill.py). It has no other effect and is unset in normal use.
"""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftstudio.core.errors import FTStudioError

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"


class CheckpointError(FTStudioError):
    """A checkpoint that cannot be written or read."""


@dataclass
class TrainState:
    step: int
    micro_batch: int  # micro-batches consumed so far: the data position
    rng: dict[str, Any]
    extra: dict[str, Any]


def _fault_pause() -> None:
    """Test hook (see the module docstring): widen the window in which a write can be interrupted."""
    delay = os.environ.get("FTSTUDIO_FAULT_SLOW_CHECKPOINT")
    if delay:
        time.sleep(float(delay))


def _discard(path: Path) -> None:
    """Remove a checkpoint folder so that no half-deleted ``step-N`` is ever visible: rename, then delete."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}"
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _write_error(final: Path, e: Exception) -> CheckpointError:
    """A clear message for a failed write; torch.save reports a full disk as a RuntimeError, not ENOSPC."""
    if isinstance(e, OSError):
        what = os.strerror(e.errno) if e.errno else str(e)
    else:
        what = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        free = shutil.disk_usage(final.parent if final.parent.exists() else final.parent.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        full = True
    hint = (" The disk is full: free some space (or set a larger checkpoint_every / smaller keep_last) "
            "and resume." if full else "")
    return CheckpointError(f"could not write checkpoint {final}: {what}. The previous checkpoint is intact.{hint}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_state_dict(model) -> dict:
    """The model's tensors, contiguous and on the CPU, with tied weights stored once (safetensors refuses shared memory)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr() if t.numel() else id(t)
        if key in seen:
            continue  # a tied weight: restored by load_state_dict(strict=False) through the tie
        seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_checkpoint(checkpoints_dir: str | Path, step: int, *, model, optimizer, scheduler, scaler=None,
                    micro_batch: int, keep_last: int = 2, extra: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    root = Path(checkpoints_dir)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(model_state_dict(model), str(tmp / "model.safetensors"))
        _fault_pause()
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        _fault_pause()
        state = {"step": step, "micro_batch": micro_batch, "rng": rng_state(), "extra": extra or {},
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
        # The state file is written last: list_checkpoints treats a folder without it as incomplete.
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        _fault_pause()
        if final.exists():  # a re-save of the same step (e.g. save-now, then stop)
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except (OSError, RuntimeError) as e:  # RuntimeError: torch.save's writer on a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(final, e) from None
    prune_checkpoints(root, keep_last)
    return final


def list_checkpoints(checkpoints_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first. Temporary folders of interrupted writes are not listed."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1][1] if found else None


def prune_checkpoints(checkpoints_dir: str | Path, keep_last: int) -> None:
    root = Path(checkpoints_dir)
    for _, p in list_checkpoints(root)[:-max(1, keep_last)]:
        _discard(p)
    clean_temporaries(root)


def clean_temporaries(checkpoints_dir: str | Path) -> None:
    """Remove what writes and deletes killed mid-way left behind (never a complete ``step-N``)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return
    for p in list(root.glob(".tmp-step-*")) + list(root.glob(".trash-*")):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None, scaler=None,
                    restore_rng: bool = True) -> TrainState:
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        opt_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu") if optimizer else None
    except Exception as e:  # noqa: BLE001 - OSError, a truncated zip (RuntimeError), SafetensorError, UnpicklingError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {n for n in missing if _is_tied(model, n)}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"checkpoint {path} does not match the model "
                              f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return TrainState(step=state["step"], micro_batch=state["micro_batch"], rng=state["rng"],
                      extra=state.get("extra", {}))


def _is_tied(model, name: str) -> bool:
    """True when parameter ``name`` shares storage with another one (so it was saved once, under the other name)."""
    sd = model.state_dict()
    t = sd.get(name)
    if t is None:
        return False
    return any(other is not t and o != name and other.data_ptr() == t.data_ptr() for o, other in sd.items())
