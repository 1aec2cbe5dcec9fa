"""Learning-rate schedules as plain functions of the step, so the GUI can draw them before any torch import.

All three start with a linear warmup from 0 to the peak (it keeps the first, noisy updates of a
pre-trained model small), then:
  cosine   lr = floor + (peak − floor) · ½(1 + cos(π·p))        p = progress through the decay, 0 → 1
  constant lr = peak
  linear   lr = floor + (peak − floor) · (1 − p)
where floor = min_lr_ratio · peak.
"""
from __future__ import annotations

import math

from ftstudio.core.config import ScheduleConfig


def warmup_steps_for(cfg: ScheduleConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return min(total_steps, int(math.ceil(cfg.warmup_ratio * total_steps)))


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The factor applied to the peak LR for the update made at ``step`` (0-based)."""
    total_steps = max(1, total_steps)
    warmup = warmup_steps_for(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    p = min(1.0, (step - warmup) / decay_steps)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - p)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def lr_at(step: int, total_steps: int, cfg: ScheduleConfig, peak_lr: float) -> float:
    return peak_lr * lr_multiplier(step, total_steps, cfg)


def lr_curve(total_steps: int, cfg: ScheduleConfig, peak_lr: float, points: int = 400) -> tuple[list[int], list[float]]:
    """(steps, lrs) sampled for a preview plot."""
    total_steps = max(1, total_steps)
    stride = max(1, total_steps // points)
    steps = list(range(0, total_steps, stride))
    if steps[-1] != total_steps - 1:
        steps.append(total_steps - 1)
    return steps, [lr_at(s, total_steps, cfg, peak_lr) for s in steps]


def build_scheduler(optimizer, total_steps: int, cfg: ScheduleConfig):
    """A torch LambdaLR applying :func:`lr_multiplier` to each param group's own peak LR (layer-wise rates keep their ratios)."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))
