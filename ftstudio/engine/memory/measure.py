"""What a run holds, counted from its live tensors (weights, gradients, optimizer state) and the allocator's
peak: the same terms as the plan, so the GUI's memory bar shows plan and measurement side by side."""
from __future__ import annotations

from ftstudio.core.events import MemorySnapshot


def _nbytes(t) -> int:
    local = getattr(t, "to_local", None)          # FSDP2 DTensor: this rank's shard
    if callable(local):
        t = local()
    return t.numel() * t.element_size()


def _key(t):
    local = getattr(t, "to_local", None)
    if callable(local):
        t = local()
    return (t.device, t.data_ptr(), t.numel()) if t.numel() else id(t)


def measure(model, optimizer, device, step: int, *, reset_peak: bool = True) -> MemorySnapshot:
    """Bytes held now, counted from the tensors: call after ``optimizer.step()`` and before ``zero_grad``.

    activations = allocator peak since the last call − (weights + gradients + optimizer state); None on CPU.
    """
    import torch

    seen: set = set()
    weights = grads = 0
    for p in model.parameters():
        k = _key(p)
        if k in seen:
            continue                               # tied weights counted once
        seen.add(k)
        weights += _nbytes(p)
        if p.grad is not None:
            grads += _nbytes(p.grad)
    opt_bytes = 0
    seen_state: set = set()
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for v in state.values():
            if torch.is_tensor(v) and _key(v) not in seen_state:
                seen_state.add(_key(v))
                opt_bytes += _nbytes(v)
    dev = torch.device(device)
    snap = MemorySnapshot(step=step, device=str(dev), weights=weights, gradients=grads, optimizer=opt_bytes)
    if dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        peak = torch.cuda.max_memory_allocated(idx)
        snap.allocated_peak = peak
        snap.activations = max(0, peak - weights - grads - opt_bytes)
        snap.reserved = torch.cuda.memory_reserved(idx)
        snap.total = torch.cuda.get_device_properties(idx).total_memory
        from ftstudio.engine.hardware import nvml_used_bytes
        snap.nvml_used = nvml_used_bytes(idx)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(idx)
    return snap

