"""hardware.py: the no-GPU path for real (no driver here) and the NVML parsing through a fake pynvml."""
import sys
import types

from ftstudio.engine import hardware


def test_no_nvml_module_is_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import pynvml → ImportError
    assert hardware.list_gpus() == []
    assert hardware.gpu_status_message() == "no NVIDIA GPU"
    assert hardware.nvml_used_bytes(0) is None


def test_no_driver_is_no_gpu(monkeypatch):
    fake = types.ModuleType("pynvml")

    def init():
        raise RuntimeError("NVML Shared Library Not Found")
    fake.nvmlInit = init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert hardware.list_gpus() == []
    assert hardware.gpu_status_message() == "no NVIDIA GPU"


def _fake_nvml(calls):
    nv = types.ModuleType("pynvml")
    ns = types.SimpleNamespace
    nv.NVML_TEMPERATURE_GPU = 0
    nv.nvmlInit = lambda: calls.append("init")
    nv.nvmlShutdown = lambda: calls.append("shutdown")
    nv.nvmlDeviceGetCount = lambda: 2
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H200" if h == "h0" else "NVIDIA RTX 4090"
    mems = {"h0": ns(total=143_771 * 2**20, used=10 * 10**9, free=143_771 * 2**20 - 10**10),
            "h1": ns(total=24 * 2**30, used=2 * 10**9, free=24 * 2**30 - 2 * 10**9)}
    nv.nvmlDeviceGetMemoryInfo = lambda h: mems[h]
    nv.nvmlDeviceGetUtilizationRates = lambda h: ns(gpu=87 if h == "h0" else 3, memory=40)
    nv.nvmlDeviceGetTemperature = lambda h, kind: 61

    def power(h):
        if h == "h1":
            raise RuntimeError("Not Supported")       # consumer card: no power reading
        return 455_123
    nv.nvmlDeviceGetPowerUsage = power
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: ([ns(pid=1, usedGpuMemory=9 * 10**9),
                                                          ns(pid=999_999_999, usedGpuMemory=2**64 - 1)]
                                                         if h == "h0" else [])
    nv.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    return nv


def test_parses_every_field_from_nvml(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(calls))
    gpus = hardware.list_gpus()
    assert [g.index for g in gpus] == [0, 1]
    g0, g1 = gpus
    assert g0.name == "NVIDIA H200" and g1.name == "NVIDIA RTX 4090"   # bytes and str names both decoded
    assert g0.total_bytes == 143_771 * 2**20 and g0.used_bytes == 10**10
    assert g0.free_bytes == g0.total_bytes - g0.used_bytes
    assert (g0.utilization, g0.temperature) == (87, 61)
    assert g0.power_watts == 455.123 and g0.power_limit_watts == 700.0
    assert g1.power_watts is None                                     # refused query → missing, not a crash
    assert [p.pid for p in g0.processes] == [1, 999_999_999]
    assert g0.processes[0].used_bytes == 9 * 10**9
    assert g0.processes[1].used_bytes is None                         # NVML's "not available" sentinel
    assert calls[0] == "init" and calls[-1] == "shutdown"
    msg = hardware.gpu_status_message()
    assert msg.splitlines()[0].startswith("GPU 0: NVIDIA H200, 10.0 / 150.8 GB used, 87% busy, 61 °C, 455 W")
    assert "2 processes" in msg and msg.splitlines()[1].startswith("GPU 1: NVIDIA RTX 4090")


def test_nvml_used_maps_cuda_visible_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert hardware.nvml_used_bytes(0) == 2 * 10**9                  # cuda:0 is NVML's GPU 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert hardware.nvml_used_bytes(0) == 10**10


def test_cpu_info():
    c = hardware.cpu_info()
    assert c.name and c.logical_cores >= 1
    assert 0 < c.ram_available_bytes <= c.ram_total_bytes
    assert set(c.to_dict()) >= {"name", "ram_total_bytes", "utilization"}
