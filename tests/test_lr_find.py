"""The LR range test: its rule on synthetic curves, and a real test on a tiny model (the trainer's own setup)."""
import hashlib
import json
import math

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.engine.train.lr_find import (FINE_TUNE_RANGE, MIN_POINTS, diverged, lr_at, lr_find, smooth,
                                           suggest)


def _valley(n=60, lo=1e-7, hi=1e-2, best=1e-3):
    """A loss that is flat at low LR, falls, bottoms at `best`, then explodes: the textbook curve."""
    lrs = [lr_at(i, n, lo, hi) for i in range(n)]
    losses = [2.0 - 1.5 * math.exp(-(math.log10(lr / best)) ** 2) if lr < best else 0.5 + 40 * (lr / best - 1)
              for lr in lrs]
    return lrs, losses


def test_schedule_is_exponential_from_start_to_end():
    assert lr_at(0, 100) == pytest.approx(1e-7) and lr_at(99, 100) == pytest.approx(1e-2)
    ratios = {round(lr_at(i + 1, 100) / lr_at(i, 100), 9) for i in range(99)}
    assert len(ratios) == 1


def test_rule_is_a_tenth_of_the_minimum_clipped_to_the_fine_tuning_range():
    lrs, losses = _valley(best=1e-3)
    sm = smooth(losses, 0.0)  # beta 0: no smoothing, the minimum is exactly where the curve has it
    lr, min_lr, steepest, clipped = suggest(lrs, sm)
    i_min = min(range(len(sm)), key=sm.__getitem__)
    assert min_lr == lrs[i_min] and lr == pytest.approx(min_lr / 10) and not clipped
    assert steepest < min_lr
    # A minimum at 1e-1 would suggest 1e-2: clipped to the top of the range.
    lrs2 = [x * 100 for x in lrs]
    lr2, _, _, clipped2 = suggest(lrs2, sm)
    assert lr2 == FINE_TUNE_RANGE[1] and clipped2
    assert suggest(lrs[:MIN_POINTS - 1], sm[:MIN_POINTS - 1])[0] is None


def test_smoothing_is_debiased_and_divergence_needs_a_rise():
    assert smooth([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])
    flat = [1.0] * 20
    assert not diverged(flat)
    assert diverged(flat + [5.0])
    assert not diverged([1.0] * 3 + [5.0])  # too few points to call it
    assert diverged([1.0, float("inf")])


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_range_test_on_a_tiny_model(tiny_llama, tmp_path):
    from test_trainer import write_text_data

    before = _digest(tiny_llama)
    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(write_text_data(tmp_path / "d.jsonl")),
                              output=str(tmp_path / "runs"), batch_size=4, seq_len=32, device="cpu",
                              precision="fp32", grad_clip=0.0)
    # A tiny LM's loss cannot rise 4× above its minimum (uniform guessing is only ~1.5× it): a lower factor.
    result = lr_find(cfg, steps=60, start_lr=1e-4, end_lr=1.0, diverge_factor=1.1)
    assert result.status == "diverged", result.reason
    assert MIN_POINTS <= result.steps < 60
    assert result.lrs[0] == pytest.approx(1e-4) and all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    assert result.suggested_lr == pytest.approx(min(FINE_TUNE_RANGE[1], max(FINE_TUNE_RANGE[0],
                                                                             result.min_loss_lr / 10)))
    i_min = result.lrs.index(result.min_loss_lr)
    assert result.smoothed[i_min] == min(result.smoothed)
    assert result.smoothed[i_min] < result.smoothed[0]                      # it learned before it diverged
    run_dir = tmp_path / "runs" / result.run_dir.split("/")[-1]
    saved = json.loads((run_dir / "lr_find.json").read_text())
    assert saved["suggested_lr"] == result.suggested_lr and len(saved["lrs"]) == result.steps
    assert result.plot and (run_dir / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Its steps are the trainer's: the run folder's metrics hold the same losses, at the swept LRs.
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in steps if e["event"] == "step"]
    assert losses[:result.steps] == pytest.approx(result.losses)
    logged = [e["lr"] for e in steps if e["event"] == "step"]  # the LR each step used (issue 30), as recorded
    assert logged[:result.steps] == pytest.approx([lr_at(k, 60, 1e-4, 1.0) for k in range(result.steps)])
    assert logged[:result.steps] == pytest.approx(result.lrs)
    assert not (run_dir / "final").exists() and not (run_dir / "checkpoints").exists()
    assert _digest(tiny_llama) == before                                    # the model's files untouched


def test_stop_is_obeyed(tiny_llama, tmp_path):
    from ftstudio.core.events import StepMetrics
    from test_trainer import write_text_data

    control = Control()

    def reporter(event):
        if isinstance(event, StepMetrics) and event.step == 12:
            control.request_stop()

    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(write_text_data(tmp_path / "d.jsonl")),
                              output=str(tmp_path / "runs"), batch_size=4, seq_len=32, device="cpu")
    result = lr_find(cfg, reporter, control, steps=80)
    assert result.status == "stopped" and result.steps == 12
    assert result.suggested_lr is None and "too few" in result.reason  # 12 points place no minimum: said so


def test_a_curve_that_cannot_support_a_choice_says_why_and_what_would():
    from ftstudio.engine.train.lr_find import unsupported

    lrs = [lr_at(i, 60) for i in range(60)]
    valley = [2.0 - (i / 30) if i < 30 else 1.0 + (i - 30) / 10 for i in range(60)]  # a bottom at step 30
    assert unsupported(lrs, valley, "diverged", 1e-4) is None
    falling = [2.0 - i / 100 for i in range(60)]  # lowest at the last LR: the minimum is beyond the range
    assert "still falling" in unsupported(lrs, falling, "finished", 5e-4) and "higher end LR" in unsupported(
        lrs, falling, "finished", 5e-4)
    rising = [1.0 + i / 100 for i in range(60)]  # lowest at the first LR: it never learned
    assert "never fell" in unsupported(lrs, rising, "diverged", 1e-6)
    assert "too few" in unsupported(lrs[:10], falling[:10], "finished", 1e-6)  # the 10-step test


def test_cli_json_and_bad_input(tiny_llama, tmp_path, capsys):
    from ftstudio.cli import main
    from test_trainer import write_text_data

    data = write_text_data(tmp_path / "d.jsonl")
    code = main(["lr-find", "--model", str(tiny_llama), "--dataset", str(data), "--output", str(tmp_path / "r"),
                 "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--steps", "30", "--end-lr", "1",
                 "--json", "--quiet"])
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert code == 0 and set(summary) >= {"suggested_lr", "plot", "steps"}
    assert FINE_TUNE_RANGE[0] <= summary["suggested_lr"] <= FINE_TUNE_RANGE[1] and summary["steps"] <= 30
    assert main(["lr-find", "--demo", "--steps", "1"]) == 2
    assert main(["lr-find", "--model", str(tiny_llama), "--dataset", str(data), "--start-lr", "1e-2",
                 "--end-lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "at least 2 steps" in err and "below the end LR" in err and "Traceback" not in err


def test_memory_plan_is_checked_before_the_test_starts(tiny_llama, tmp_path, monkeypatch):
    import psutil

    from ftstudio.core.errors import ConfigError
    from ftstudio.engine.train.preflight import check_memory_plan

    cfg = RunConfig().replace(source=str(tiny_llama), dataset="demo", output=str(tmp_path / "runs"), device="cpu",
                              seq_len=32, batch_size=2)
    ok = check_memory_plan(cfg)
    assert ok.device == "cpu" and 0 < ok.planned < ok.capacity and "fits" in ok.message
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": ok.planned - 1})())
    with pytest.raises(ConfigError, match="does not fit"):
        lr_find(cfg, steps=10)
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made
