"""A run that ran out of memory: the reason and the advice of its RunFailed, planned from the run's own
config and the device's peak (moved out of trainer.py, which stays short enough to read top to bottom)."""
from __future__ import annotations

from ftstudio.core.events import LogLine


def explain_run_oom(error, *, device: str, model_config: dict, cfg, step: int, release, report) -> tuple[str, str]:
    """(reason, advice) for an out-of-memory error at ``step``. The device's peak is read first, then
    ``release()`` frees what the failed step held (so the GUI can start again), then the plan explains it."""
    import torch

    capacity = peak = None
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated(device)
        capacity = torch.cuda.get_device_properties(device).total_memory
    release()
    reason = f"out of memory ({str(error).splitlines()[0][:200]})"
    advice = "lower batch_size or seq_len, or turn on activation_checkpointing"
    try:
        from ftstudio.engine.memory import explain_oom
        reason, advice = explain_oom(model_config, cfg, max(1, len(cfg.hardware.gpus)), capacity, peak)
    except Exception as e:  # noqa: BLE001 - the advice is a bonus; the failure must still be reported
        report(LogLine(f"could not plan the out-of-memory advice: {e}", "warning"))
    return f"Out of memory at step {step + 1}: {reason}", advice
