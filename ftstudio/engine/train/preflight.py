"""The memory plan checked before a run that the user does not watch start: the LR range test and each sweep
configuration. The plan (``memory.estimate``) against the device it will run on: the GPU's memory from NVML,
or the host's available RAM on the CPU; when it does not fit, ``memory.solve``'s advice in the error. The host
copy of the best weights (``checkpoint.export_best``) is counted against the host RAM.

No torch here: it runs before the model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass

from ftstudio.core.errors import ConfigError

# The host copy of the best weights holds each parameter as the model trains it: fp32 unless pure bf16.
_WEIGHT_BYTES = {"bf16": 2}


@dataclass
class PlanCheck:
    device: str
    planned: int            # bytes the device must hold
    capacity: int | None    # bytes it has (None: unknown, the check was skipped)
    host_extra: int = 0     # host RAM for the best-weights copy

    @property
    def message(self) -> str:
        gb = lambda x: f"{x / 1e9:.2f} GB"  # noqa: E731
        if self.capacity is None:
            return f"Memory plan: {gb(self.planned)} on {self.device} (capacity unknown: not checked)"
        extra = f" + {gb(self.host_extra)} host RAM for the best weights" if self.host_extra else ""
        return f"Memory plan: {gb(self.planned)}{extra} on {self.device}, {gb(self.capacity)} available: fits"


def _device_of(cfg) -> str:
    if cfg.hardware.device != "auto":
        return cfg.hardware.device
    from ftstudio.engine.hardware import list_gpus
    return "cuda:0" if list_gpus() else "cpu"


def _capacity(device: str) -> int | None:
    if device.startswith("cuda"):
        from ftstudio.engine.hardware import list_gpus
        index = int(device.split(":")[1]) if ":" in device else 0
        gpus = {g.index: g for g in list_gpus()}
        return gpus[index].total_bytes if index in gpus else None
    return _host_available()


def _host_available() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no psutil data on this platform: the check is skipped, and says so
        return None


def check_memory_plan(cfg, what: str = "this run") -> PlanCheck:
    """Raise ``ConfigError`` with the solver's advice when ``cfg`` does not fit the device it runs on."""
    from ftstudio.engine.memory import estimate, load_shape, resolve_precision, solve

    shape, _ = load_shape(cfg.model.source)
    gpus = max(1, len(cfg.hardware.gpus))
    plan = estimate(shape, cfg, gpus)
    device = _device_of(cfg)
    on_cpu = not device.startswith("cuda")
    host_extra = 0
    if cfg.checkpoint.export_best:
        host_extra = plan.params * _WEIGHT_BYTES.get(resolve_precision(cfg), 4)
    planned = plan.total + (host_extra if on_cpu else 0)
    capacity = _capacity(device)
    gb = lambda x: f"{x / 1e9:.2f} GB"  # noqa: E731
    if capacity is not None and planned > capacity:
        advice = ""
        if not on_cpu:
            adv = solve(shape, cfg, capacity, gpus)
            advice = ("; " + "; or ".join(adv.suggestions[:2])) if adv.suggestions else ""
        else:
            advice = "; lower batch_size or seq_len, or turn on activation_checkpointing"
        raise ConfigError("train.batch_size", f"{what} does not fit: the memory plan needs {gb(planned)} on "
                          f"{device}, which has {gb(capacity)}{advice}")
    if host_extra and not on_cpu:
        host = _host_available()
        if host is not None and host_extra > host:
            raise ConfigError("checkpoint.export_best", f"the best weights need {gb(host_extra)} of host RAM, "
                              f"{gb(host)} is available; turn export_best off")
    return PlanCheck(device=device, planned=planned, capacity=capacity, host_extra=host_extra)
