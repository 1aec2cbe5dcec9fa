"""FP8 training of the linear layers (``memory.fp8``) through torchao's float8 (``convert_to_float8_training``).

Each ``nn.Linear`` inside the transformer blocks becomes torchao's ``Float8Linear`` (a subclass: the same weight
and bias parameters, the same state-dict keys, so checkpoints and export do not change): its matmuls run in FP8
with dynamic scales, "tensorwise" (one scale per tensor, cuBLAS) or "rowwise" (one per row, more accurate, a
little slower). The LM head and the embeddings stay in bf16 (the loss is sensitive to the head; torchtitan does
the same), as does any layer whose sizes are not multiples of 16 (FP8 GEMMs need them). It pays only with
compile (inductor fuses the scaling and casts) on a GPU with FP8 tensor cores (compute capability 8.9+: Ada,
Hopper, Blackwell).

``auto`` (the default, and Fastest's) turns it on from :data:`AUTO_MIN_PARAMS` parameters: peers report +10 % (3B) to
+25 % (8B) on an H100 with compile, and on one H100 the Llama-3.2-1B shape (1.24 B, 4 × 2048, Fastest) ran 72.4 k
tokens/s in FP8 tensorwise against 64.3 k in bf16 in the same call (+12.6 %; peak 17.0 against 20.2 GB), its loss
within 0.15 % of the bf16 run's at every one of 35 steps (tests/benchmarks/results/pareto_nvidia_h100_80gb_hbm3.md).
Below 1 B it was not measured (smaller matmuls gain less beside the casts), so auto leaves it off there.

The quality guard: before conversion the first training batch's loss is computed in bf16; after conversion the
same batch in FP8. A relative gap above :data:`PROBE_TOLERANCE` undoes the conversion (the run trains in bf16 and
says why). During the run, the logged loss is watched over the first :data:`WATCH_STEPS` steps: a non-finite loss
or one that climbs :data:`RISE` × above the first logged loss is told to the run as FP8 diverging (``--fp8 off``
is the remedy). The memory plan counts FP8: the traced step converts the same layers (memory/tracer/step.py,
torchao's Float8Linear on fake tensors), the closed form has an FP8 term (memory/plan.py, fp8_saved_less).
"""
from __future__ import annotations

import importlib.util
import math

from ftstudio.core.errors import ConfigError
from ftstudio.core.events import LogLine, StepMetrics
from ftstudio.engine.models.float8 import convert, module_filter, unconvert  # noqa: F401 - the trainer's names

AUTO_MIN_PARAMS = 1e9
AUTO_RECIPE = "tensorwise"
PROBE_TOLERANCE = 0.02
WATCH_STEPS = 200
RISE = 1.5


def decide(mode: str, *, device: str, capability: tuple[int, int] | None, compiled: bool, params: int,
           torchao: bool, gpus: int = 1) -> tuple[str | None, str]:
    """(recipe or None, the log line saying why). Explicit modes that cannot run raise ConfigError."""
    if mode == "off" or (mode == "auto" and not device.startswith("cuda")):
        return None, ""                   # auto (the default) says nothing on a CPU run
    why_not = (f"needs a CUDA GPU (this run is on {device})" if not device.startswith("cuda") else
               f"runs on one GPU for now (this run shards over {gpus})" if gpus > 1 else
               "needs torchao (pip install 'ftstudio[fast]')" if not torchao else
               f"needs FP8 tensor cores (compute capability 8.9+; this GPU is {capability[0]}.{capability[1]})"
               if capability is not None and tuple(capability) < (8, 9) else "")
    if mode != "auto":
        if why_not:
            raise ConfigError("memory.fp8", f"{mode} {why_not}; use --fp8 off")
        note = "" if compiled else " (uncompiled: FP8's casts are not fused, expect little gain)"
        return mode, f"FP8: linear layers of the blocks train in FP8, {mode} scaling{note}"
    if why_not:
        return None, f"FP8 off (auto): {why_not}"
    if not compiled:
        return None, "FP8 off (auto): it pays only with compile, which this run does not use"
    if params < AUTO_MIN_PARAMS:
        return None, (f"FP8 off (auto): {params / 1e9:.2f} B parameters; it pays from about "
                      f"{AUTO_MIN_PARAMS / 1e9:.0f} B (--fp8 {AUTO_RECIPE} forces it)")
    return AUTO_RECIPE, f"FP8 on (auto): {params / 1e9:.1f} B parameters, compiled, {AUTO_RECIPE} scaling"


def decide_here(mode: str, device: str, *, compiled: bool, params: int, gpus: int = 1, capability: bool = True):
    """:func:`decide` with what this machine says: whether torchao is installed and, with ``capability``, the
    device's compute capability (None where CUDA is absent: not checked). What the trainer, its fast path and the
    plan ask alike."""
    cap = None
    if capability and device.startswith("cuda"):
        import torch
        cap = torch.cuda.get_device_capability(torch.device(device)) if torch.cuda.is_available() else None
    return decide(mode, device=device, capability=cap, compiled=compiled, params=params,
                  torchao=importlib.util.find_spec("torchao") is not None, gpus=gpus)


def relative_gap(fp8_loss: float, bf16_loss: float) -> float:
    return abs(fp8_loss - bf16_loss) / max(abs(bf16_loss), 1e-8) if math.isfinite(fp8_loss) else math.inf


class DivergenceGuard:
    """A reporter in front of the run's: passes every event on, and tells the run once if the logged loss of
    the first WATCH_STEPS steps is non-finite or climbs RISE× above the first logged loss."""

    def __init__(self, report, watch: int = WATCH_STEPS, rise: float = RISE):
        self.report, self.watch, self.rise = report, watch, rise
        self.first: float | None = None
        self.told = False

    def __call__(self, event) -> None:
        self.report(event)
        if self.told or not isinstance(event, StepMetrics) or event.step > self.watch:
            return
        loss = float(event.loss)
        if self.first is None and math.isfinite(loss):
            self.first = loss
            return
        if not math.isfinite(loss) or (self.first is not None and loss > self.rise * self.first):
            self.told = True
            self.report(LogLine(f"FP8 may be diverging: loss {loss:.4g} at step {event.step}, against "
                                f"{self.first if self.first is not None else float('nan'):.4g} at the first logged "
                                "step; rerun with --fp8 off to compare with bf16", "warning"))


def setup(model, prepared, device: str, numerics, cfg, report, *, params: int):
    """The trainer's hook, before compile: decide, convert, probe the first batch against bf16; returns the
    reporter the run goes on with (the divergence guard in front of ``report`` when FP8 is on)."""
    recipe, line = decide_here(cfg.memory.fp8, device, compiled=bool(cfg.memory.compile), params=params,
                               gpus=max(1, len(cfg.hardware.gpus)))
    if line:
        report(LogLine(line))
    if recipe is None:
        return report
    probe = _probe_loss(model, prepared, device, numerics, cfg)
    n = convert(model, recipe)
    fp8_loss = _probe_loss(model, prepared, device, numerics, cfg)
    gap = relative_gap(fp8_loss, probe) if probe is not None else 0.0
    if gap > PROBE_TOLERANCE:
        unconvert(model)
        report(LogLine(f"FP8 undone: the first batch's loss was {fp8_loss:.4f} in FP8 against {probe:.4f} in bf16 "
                       f"({gap:.1%} apart, over {PROBE_TOLERANCE:.0%}); training in bf16", "warning"))
        return report
    if probe is not None:
        report(LogLine(f"FP8: {n} linear layers; the first batch's loss {fp8_loss:.4f} against {probe:.4f} in bf16 "
                       f"({gap:.2%} apart)"))
    return DivergenceGuard(report)


def _probe_loss(model, prepared, device, numerics, cfg) -> float | None:
    """The loss of the first training micro-batch, no gradient (None where the task is not a causal LM)."""
    import torch

    from ftstudio.engine.data.collate import device_batch
    from ftstudio.engine.train.loss import causal_lm_loss

    rows = prepared.train[:cfg.train.batch_size]
    if not rows or prepared.task != "causal-lm":
        return None
    batch = device_batch(prepared.collate, rows, device).inputs()
    autocast = torch.autocast(device.split(":")[0], dtype=numerics.autocast_dtype or torch.bfloat16)
    with torch.no_grad(), autocast:
        return float(causal_lm_loss(model, batch, chunked=True))   # sliced: no full fp32 logits for the probe
