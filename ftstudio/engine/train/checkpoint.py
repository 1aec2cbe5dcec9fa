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

import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftstudio.core.atomic import (DiskFullError, atomic_dir, clean_leftovers, discard, disk_full_message,
                                  free_bytes, is_disk_full)
from ftstudio.core.errors import FTStudioError

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.pt"
BEST_FILE = "best.safetensors"   # export_best's weights, beside the current ones


class CheckpointError(FTStudioError):
    """A checkpoint that cannot be written or read."""


class CheckpointDiskFull(DiskFullError, CheckpointError):
    """A checkpoint that did not fit on the disk (the previous one is intact)."""


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
    discard(path)


def _write_error(final: Path, e: Exception, needed: int | None = None) -> CheckpointError:
    """A clear message for a failed write; torch.save reports a full disk as a RuntimeError, safetensors as a
    SafetensorError, neither as an OSError with ENOSPC."""
    if isinstance(e, OSError):
        what = os.strerror(e.errno) if e.errno else str(e)
    else:
        what = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    free = free_bytes(final.parent)
    full = is_disk_full(e) or (free is not None and free < 64 * 2**20)
    if full:
        return CheckpointDiskFull(f"could not write checkpoint {final}: {disk_full_message(final.parent, needed)}. "
                                  "The previous checkpoint is intact.", path=str(final), needed=needed)
    return CheckpointError(f"could not write checkpoint {final}: {what}. The previous checkpoint is intact.")


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
                    micro_batch: int, keep_last: int = 2, extra: dict | None = None,
                    best_weights: list | None = None) -> Path:
    """Write ``checkpoints/step-N`` atomically (core/atomic.py). ``optimizer=None`` writes no optimizer state: the
    end-of-run checkpoint that only keeps the weights safe for the export (``extra["ended"]``); ``best_weights``:
    export_best's copy of the best evaluation's weights (train/early_stop.py), so a resume exports the same."""
    import torch
    from safetensors.torch import save_file

    root = Path(checkpoints_dir)
    final = root / f"step-{step}"
    weights = model_state_dict(model)
    try:
        # Not parents=True: a run folder deleted under the run must not be half re-created by its checkpoint.
        root.mkdir(exist_ok=True)
        with atomic_dir(final) as tmp:
            save_file(weights, str(tmp / "model.safetensors"))
            _fault_pause()
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                _fault_pause()
            if best_weights is not None:
                save_file({str(i): t.contiguous() for i, t in enumerate(best_weights)}, str(tmp / BEST_FILE))
            state = {"step": step, "micro_batch": micro_batch, "rng": rng_state(), "extra": extra or {},
                     "scheduler": scheduler.state_dict() if scheduler is not None else None,
                     "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
            # The state file is written last: list_checkpoints treats a folder without it as incomplete.
            torch.save(state, tmp / STATE_FILE)
            _fault_pause()
    except Exception as e:  # noqa: BLE001 - OSError; torch.save's RuntimeError and SafetensorError on a full disk
        needed = sum(t.numel() * t.element_size() for t in weights.values())
        if optimizer is not None:
            needed += _state_bytes(optimizer.state_dict())
        raise _write_error(final, e, needed) from None
    prune_checkpoints(root, keep_last)
    return final


def _state_bytes(obj) -> int:
    """Bytes of the tensors inside a (nested) state dict."""
    import torch
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


def read_state(path: str | Path) -> dict:
    """A checkpoint's trainer state alone (no weights): what a resume checks before it loads the model."""
    import torch
    try:
        return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first}{_older(path)}") from None


def _older(path: str | Path) -> str:
    """What a damaged checkpoint's message adds: the one a resume would take once it is removed."""
    path = Path(path)
    older = [p for n, p in list_checkpoints(path.parent) if n < _step_of(path)]
    if older:
        return f"; remove {path.name} to resume from {older[-1].name}, the newest before it"
    return "; no older checkpoint exists"


def _step_of(path: Path) -> int:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else -1


def mark_ended(path: str | Path, ended: str) -> None:
    """Mark a complete checkpoint as the run's end (``extra["ended"]``: its stop reason), rewriting only its state
    file, atomically: a resume (``ftstudio export RUN``) then evaluates and exports without training further."""
    import io

    import torch

    from ftstudio.core.atomic import atomic_write_bytes
    state = read_state(path)
    state.setdefault("extra", {})["ended"] = ended
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path) / STATE_FILE, buf.getvalue())


def load_best_weights(path: str | Path) -> list | None:
    """export_best's copy saved with a checkpoint, in the order early_stop.snapshot made it (None: none saved)."""
    from safetensors.torch import load_file
    f = Path(path) / BEST_FILE
    if not f.exists():
        return None
    try:
        d = load_file(str(f))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} cannot be read: {BEST_FILE}: {str(e).splitlines()[0]}"
                              f"{_older(path)}") from None
    return [d[str(i)] for i in range(len(d))]


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
    clean_leftovers(checkpoints_dir)


def load_checkpoint(path: str | Path, *, model, optimizer=None, scheduler=None, scaler=None,
                    restore_rng: bool = True) -> TrainState:
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
        has_opt = (path / "optimizer.pt").exists() or state.get("extra", {}).get("ended") is None
        opt_state = (torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
                     if optimizer is not None and has_opt else None)
    except Exception as e:  # noqa: BLE001 - OSError, a truncated zip (RuntimeError), SafetensorError, UnpicklingError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {first}{_older(path)}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {n for n in missing if _is_tied(model, n)}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"checkpoint {path} does not match the model "
                              f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    if opt_state is not None:   # none in an end-of-run checkpoint: it only carries the weights to export
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
