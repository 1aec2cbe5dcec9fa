"""What the machine has: NVIDIA GPUs through NVML (nvidia-ml-py), CPU and RAM through psutil.

No torch import: the GUI's status bar and ``ftstudio gpus`` use this before any training starts. A machine
without an NVIDIA driver (or without the NVML library) is a normal case: :func:`list_gpus` returns an
empty list and :func:`gpu_status_message` says "no NVIDIA GPU".
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field


@dataclass
class GpuProcess:
    pid: int
    used_bytes: int | None
    name: str = ""


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization: int | None = None      # % of time a kernel ran over the last sample period
    temperature: int | None = None      # °C
    power_watts: float | None = None
    power_limit_watts: float | None = None
    processes: list[GpuProcess] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CpuInfo:
    name: str
    physical_cores: int | None
    logical_cores: int | None
    utilization: float                  # % over all cores
    ram_total_bytes: int
    ram_available_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def _nvml():
    """The initialised pynvml module, or None where the library or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound / DriverNotLoaded / ...: no GPU here
        return None
    return pynvml


def _text(x) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def _try(fn, *args, default=None):
    # Consumer cards and containers refuse some queries (power, processes): a missing figure, not an error.
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001
        return default


def _process_name(pid: int) -> str:
    try:
        import psutil
        return psutil.Process(pid).name()
    except Exception:  # noqa: BLE001 - another user's process or one that just ended
        return ""


def _gpu(nv, i: int) -> GpuInfo:
    h = nv.nvmlDeviceGetHandleByIndex(i)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    util = _try(nv.nvmlDeviceGetUtilizationRates, h)
    temp = _try(nv.nvmlDeviceGetTemperature, h, getattr(nv, "NVML_TEMPERATURE_GPU", 0))
    power = _try(nv.nvmlDeviceGetPowerUsage, h)          # milliwatts
    limit = _try(nv.nvmlDeviceGetEnforcedPowerLimit, h)
    procs = []
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in _try(getattr(nv, getter, lambda _h: []), h, default=[]) or []:
            used = getattr(p, "usedGpuMemory", None)
            if not isinstance(used, int) or used < 0 or used >= 2**63:   # NVML's "not available"
                used = None
            procs.append(GpuProcess(pid=int(p.pid), used_bytes=used, name=_process_name(int(p.pid))))
    return GpuInfo(index=i, name=_text(nv.nvmlDeviceGetName(h)), total_bytes=int(mem.total),
                   used_bytes=int(mem.used), free_bytes=int(mem.free),
                   utilization=int(util.gpu) if util is not None else None,
                   temperature=int(temp) if temp is not None else None,
                   power_watts=power / 1000 if power is not None else None,
                   power_limit_watts=limit / 1000 if limit is not None else None, processes=procs)


def list_gpus() -> list[GpuInfo]:
    """Every NVIDIA GPU NVML sees (an empty list where there is none, never an exception)."""
    nv = _nvml()
    if nv is None:
        return []
    try:
        return [_gpu(nv, i) for i in range(nv.nvmlDeviceGetCount())]
    except Exception:  # noqa: BLE001 - a driver that fails mid-query: report no GPU rather than crash the GUI
        return []
    finally:
        _try(nv.nvmlShutdown)


def nvml_used_bytes(index: int) -> int | None:
    """Device-wide used memory of GPU ``index`` (all processes, CUDA contexts included), or None.

    ``index`` is the CUDA index; with CUDA_VISIBLE_DEVICES set it is mapped to the NVML index.
    """
    nv = _nvml()
    if nv is None:
        return None
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if visible != [""] and index < len(visible) and visible[index].strip().isdigit():
            index = int(visible[index])
        return int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(index)).used)
    except Exception:  # noqa: BLE001
        return None
    finally:
        _try(nv.nvmlShutdown)


def gpu_status_message() -> str:
    """One line per GPU for the status bar and ``ftstudio gpus``; "no NVIDIA GPU" where there is none."""
    gpus = list_gpus()
    if not gpus:
        return "no NVIDIA GPU"
    lines = []
    for g in gpus:
        extra = [f"{g.utilization}% busy" if g.utilization is not None else None,
                 f"{g.temperature} °C" if g.temperature is not None else None,
                 f"{g.power_watts:.0f} W" if g.power_watts is not None else None,
                 f"{len(g.processes)} process{'es' if len(g.processes) != 1 else ''}" if g.processes else None]
        lines.append(f"GPU {g.index}: {g.name}, {g.used_bytes / 1e9:.1f} / {g.total_bytes / 1e9:.1f} GB used"
                     + "".join(f", {e}" for e in extra if e))
    return "\n".join(lines)


def cpu_info() -> CpuInfo:
    import platform

    import psutil
    vm = psutil.virtual_memory()
    name = platform.processor() or platform.machine()
    try:  # the marketing name lives in /proc/cpuinfo on Linux; platform gives only "x86_64" there
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return CpuInfo(name=name, physical_cores=psutil.cpu_count(logical=False), logical_cores=psutil.cpu_count(),
                   utilization=psutil.cpu_percent(interval=None), ram_total_bytes=int(vm.total),
                   ram_available_bytes=int(vm.available))
