"""Issue 30: figures a researcher can take at face value: the LR logged is the one the step used, the end-of-run
train loss is a labelled mean over the last steps, a classifier's evaluation says its majority-class baseline,
per-class precision/recall and when its predictions collapse onto one class."""
from __future__ import annotations

import json

import pytest

from ftstudio.core.events import RunFinished, StepMetrics
from ftstudio.engine.train.figures import LossTail, class_figures, tail_steps
from ftstudio.engine.train.schedule import lr_at

from test_trainer import lm_config, run, write_text_data


def test_the_lr_logged_for_a_step_is_the_one_it_used(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=6,
                    eval_every=0, warmup_steps=3, schedule="cosine", lr=1e-3)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    logged = [e.lr for e in events if isinstance(e, StepMetrics)]
    want = [lr_at(s, 6, cfg.schedule, 1e-3) for s in range(6)]
    assert logged == pytest.approx(want, rel=1e-12)
    assert logged[0] == pytest.approx(1e-3 / 3) and logged[2] == pytest.approx(1e-3)   # warmup: peak/W first
    assert logged[-1] > 0                                                               # not the step after
    lines = [json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in lines if x["event"] == "step"] == pytest.approx(want, rel=1e-12)


def test_the_end_of_run_train_loss_is_the_mean_of_the_last_steps(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=12,
                    eval_every=0, log_every=1)
    result, events = run(cfg)
    losses = [e.loss for e in events if isinstance(e, StepMetrics)]
    assert result.train_loss_steps == 10 == tail_steps(12)
    assert result.train_loss == pytest.approx(sum(losses[-10:]) / 10, rel=1e-5)
    assert result.train_loss != pytest.approx(losses[-1], rel=1e-6)


def test_tail_steps_and_loss_tail():
    assert [tail_steps(n) for n in (1, 6, 10, 50, 300, 5000)] == [1, 6, 10, 10, 30, 100]
    import torch
    tail = LossTail(3)
    assert tail.mean(2.5) == (2.5, 0)
    for x in (1.0, 2.0, 3.0, 4.0):
        tail.append(torch.tensor(x))
    assert tail.mean() == (pytest.approx(3.0), 3) and LossTail(30)._losses.maxlen == 10


def test_class_figures_say_the_baseline_and_a_collapse():
    targets = [0] * 87 + [1] * 13
    collapsed = class_figures([0] * 100, targets, ["ham", "spam"])
    assert collapsed["majority_class"] == "ham" and collapsed["majority_baseline"] == pytest.approx(0.87)
    assert collapsed["per_class"]["ham"] == {"precision": 0.87, "recall": 1.0, "support": 87, "predicted": 100}
    assert collapsed["per_class"]["spam"] == {"precision": None, "recall": 0.0, "support": 13, "predicted": 0}
    assert "collapsed onto one class" in collapsed["collapsed"] and "'ham'" in collapsed["collapsed"]
    good = class_figures([0] * 85 + [1] * 2 + [1] * 12 + [0], targets, ["ham", "spam"])
    assert good["collapsed"] is None
    assert good["per_class"]["spam"]["precision"] == pytest.approx(12 / 14)
    assert good["per_class"]["spam"]["recall"] == pytest.approx(12 / 13)
    assert class_figures([1, 1], [1, 1])["collapsed"] is None       # one class in the targets: nothing to say
