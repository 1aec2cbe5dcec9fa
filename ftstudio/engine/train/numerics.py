"""Device and precision decisions the trainer makes once at setup: which device, which weight dtype, autocast and
loss scaling a precision name means."""
from __future__ import annotations

from dataclasses import dataclass

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError


@dataclass
class Numerics:
    """How a precision name maps onto torch: the weights' dtype, autocast and loss scaling."""
    precision: str
    param_dtype: "object"  # torch.dtype
    autocast_dtype: "object | None"
    grad_scaler: bool


def pick_device(cfg: RunConfig) -> str:
    import torch

    dev = cfg.hardware.device
    if cfg.hardware.gpus and dev in ("auto", "cuda"):
        dev = f"cuda:{cfg.hardware.gpus[0]}"
    if dev == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("hardware.device", f"{dev!r} asked for, but no CUDA GPU is available; use 'cpu'")
        if dev == "cuda":
            return "cuda:0"
        if int(dev.split(":")[1]) >= torch.cuda.device_count():
            raise ConfigError("hardware.device", f"{dev!r}: only {torch.cuda.device_count()} GPU(s) present")
    return dev


def pick_numerics(precision: str, device: str) -> Numerics:
    import torch

    on_cuda = device.startswith("cuda")
    if precision == "auto":
        if on_cuda:
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "fp16-mixed"
        else:
            precision = "fp32"
    if precision == "fp16-mixed" and not on_cuda:
        raise ConfigError("hardware.precision", "fp16-mixed needs a CUDA GPU; use fp32 or bf16-mixed on the CPU")
    return {
        # The seed's 16N recipe: fp32 master weights (the optimizer updates them), bf16 compute via autocast.
        "bf16-mixed": Numerics("bf16-mixed", torch.float32, torch.bfloat16, False),
        # fp16 has a narrow exponent range: small gradients underflow unless the loss is scaled up.
        "fp16-mixed": Numerics("fp16-mixed", torch.float32, torch.float16, True),
        # Pure bf16: weights, gradients and optimizer states in bf16 (half the bytes, less exact updates).
        "bf16": Numerics("bf16", torch.bfloat16, None, False),
        "fp32": Numerics("fp32", torch.float32, None, False),
    }[precision]
