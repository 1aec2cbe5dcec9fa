"""Device, precision and data-order decisions the trainer makes once at setup."""
from __future__ import annotations

import math
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


@dataclass
class Schedule:
    """How many micro-batches and optimizer steps the run has, and which examples each micro-batch holds.

    With data mixing (fraction f of each batch from the general set), micro-batch i holds
    g_i = round(f·B·(i+1)) − round(f·B·i) general rows and B − g_i task rows, so the running share of
    general rows tracks f to within one row. Task and general rows are read from two endless streams,
    each a sequence of seeded per-epoch shuffles: any micro-batch can be recomputed from its number
    alone, which is what makes a resumed run continue exactly.
    """
    n_examples: int
    batch_size: int
    grad_accum: int
    seed: int
    total_steps: int
    mix_fraction: float = 0.0
    n_general: int = 0

    @property
    def task_rows_per_batch(self) -> float:
        return self.batch_size * (1.0 - self.mix_fraction)

    @property
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_examples / self.task_rows_per_batch))

    @property
    def steps_per_epoch(self) -> float:
        return self.batches_per_epoch / self.grad_accum

    def _general_before(self, micro_batch: int) -> int:
        return round(self.mix_fraction * self.batch_size * micro_batch)

    @staticmethod
    def _stream(start: int, count: int, n: int, seed: int) -> list[int]:
        import torch

        out: list[int] = []
        epoch, pos = divmod(start, n)
        while len(out) < count:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g).tolist()
            take = perm[pos:pos + count - len(out)]
            out += take
            epoch, pos = epoch + 1, 0
        return out

    def batch_indices(self, micro_batch: int) -> list[int]:
        """Task example indices of global micro-batch number ``micro_batch``."""
        if self.mix_fraction == 0:
            # Without mixing, batches never straddle epochs: the last batch of an epoch may be short.
            epoch, pos = divmod(micro_batch, self.batches_per_epoch)
            perm = self._stream(epoch * self.n_examples, self.n_examples, self.n_examples, self.seed)
            return perm[pos * self.batch_size:(pos + 1) * self.batch_size]
        g0, g1 = self._general_before(micro_batch), self._general_before(micro_batch + 1)
        t0 = micro_batch * self.batch_size - g0
        return self._stream(t0, self.batch_size - (g1 - g0), self.n_examples, self.seed)

    def general_indices(self, micro_batch: int) -> list[int]:
        """General-set example indices mixed into micro-batch ``micro_batch`` (empty without mixing)."""
        if self.mix_fraction == 0 or self.n_general == 0:
            return []
        g0, g1 = self._general_before(micro_batch), self._general_before(micro_batch + 1)
        return self._stream(g0, g1 - g0, self.n_general, self.seed + 7919)


def plan_schedule(cfg: RunConfig, n_examples: int, n_general: int = 0) -> Schedule:
    if n_examples == 0:
        raise ConfigError("data.dataset", "the training split is empty")
    mix = cfg.regularize.mix_fraction if n_general else 0.0
    s = Schedule(n_examples, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed, 0, mix, n_general)
    if cfg.train.max_steps is not None:
        s.total_steps = cfg.train.max_steps
    else:
        s.total_steps = max(1, math.ceil(cfg.train.epochs * s.batches_per_epoch / cfg.train.grad_accum))
    return s
