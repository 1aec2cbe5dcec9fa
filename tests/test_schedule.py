import math

import pytest

from ftstudio.core.config import ScheduleConfig
from ftstudio.engine.train.schedule import lr_at, lr_curve, warmup_steps_for

PEAK = 2e-5


def test_cosine_matches_formula_at_chosen_steps():
    cfg = ScheduleConfig(schedule="cosine", warmup_ratio=0.1, min_lr_ratio=0.1)
    total = 100
    assert warmup_steps_for(cfg, total) == 10
    assert lr_at(0, total, cfg, PEAK) == pytest.approx(PEAK * 1 / 10)
    assert lr_at(4, total, cfg, PEAK) == pytest.approx(PEAK * 5 / 10)
    assert lr_at(9, total, cfg, PEAK) == pytest.approx(PEAK)
    floor = 0.1 * PEAK
    for step in (10, 32, 55, 77, 99):
        p = (step - 10) / 90
        expected = floor + (PEAK - floor) * 0.5 * (1 + math.cos(math.pi * p))
        assert lr_at(step, total, cfg, PEAK) == pytest.approx(expected)
    assert lr_at(55, total, cfg, PEAK) == pytest.approx(floor + (PEAK - floor) * 0.5)


def test_constant_with_warmup_holds_the_peak():
    cfg = ScheduleConfig(schedule="constant", warmup_steps=5)
    assert lr_at(1, 50, cfg, PEAK) == pytest.approx(PEAK * 2 / 5)
    assert [lr_at(s, 50, cfg, PEAK) for s in (4, 5, 20, 49)] == pytest.approx([PEAK] * 4)


def test_linear_decay_heads_for_the_floor():
    # HF convention: progress = (step - warmup) / (total - warmup); the step after the last would hit the floor.
    cfg = ScheduleConfig(schedule="linear", warmup_ratio=0.0, min_lr_ratio=0.2)
    floor = 0.2 * PEAK
    assert lr_at(0, 10, cfg, PEAK) == pytest.approx(PEAK)
    assert lr_at(5, 10, cfg, PEAK) == pytest.approx(floor + (PEAK - floor) * 0.5)
    assert lr_at(9, 10, cfg, PEAK) == pytest.approx(floor + (PEAK - floor) * 0.1)
    assert lr_at(10, 10, cfg, PEAK) == pytest.approx(floor)


def test_torch_scheduler_follows_the_same_function():
    import torch

    from ftstudio.engine.train.schedule import build_scheduler

    cfg = ScheduleConfig(schedule="cosine", warmup_ratio=0.2)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": PEAK}], lr=PEAK)
    sched = build_scheduler(opt, 20, cfg)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 20, cfg, PEAK) for s in range(20)])


def test_curve_for_preview_covers_the_run():
    steps, lrs = lr_curve(1000, ScheduleConfig(), 1e-4, points=100)
    assert steps[0] == 0 and steps[-1] == 999 and len(steps) == len(lrs) <= 102
    assert max(lrs) == pytest.approx(1e-4, rel=0.02)
