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
    assert collapsed["per_class"]["ham"] == {"precision": 0.87, "recall": 1.0, "f1": pytest.approx(2 * 87 / 187),
                                             "support": 87, "predicted": 100}
    assert collapsed["per_class"]["spam"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 13,
                                              "predicted": 0}
    assert "collapsed onto one class" in collapsed["collapsed"] and "'ham'" in collapsed["collapsed"]
    good = class_figures([0] * 85 + [1] * 2 + [1] * 12 + [0], targets, ["ham", "spam"])
    assert good["collapsed"] is None
    assert good["per_class"]["spam"]["precision"] == pytest.approx(12 / 14)
    assert good["per_class"]["spam"]["recall"] == pytest.approx(12 / 13)
    assert class_figures([1, 1], [1, 1])["collapsed"] is None       # one class in the targets: nothing to say


# -- after the first step: every trainable tensor moved, or the run says which did not --------------------------
def _toy(dtype):
    import torch

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = torch.nn.Linear(8, 8).to(dtype)
            self.unused = torch.nn.Linear(8, 8).to(dtype)     # never in the forward: no gradient

        def forward(self, x):
            return self.used(x).float().pow(2).mean()
    torch.manual_seed(0)
    return Toy()


def _first_step(model, optimizer, name):
    import torch

    from ftstudio.core.config import RunConfig
    from ftstudio.core.events import LogLine
    from ftstudio.engine.train.figures import check_first_step

    said = []
    check_first_step(optimizer, model, RunConfig().replace(optimizer=name), said.append, fresh=True)
    for _ in range(2):
        model(torch.randn(4, 8, dtype=next(model.parameters()).dtype)).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(isinstance(e, LogLine) for e in said)
    return [(e.level, e.message) for e in said]


def test_the_first_step_names_tensors_that_did_not_move():
    import torch

    model = _toy(torch.float32)
    said = _first_step(model, torch.optim.SGD(model.parameters(), lr=0.1), "sgd")
    assert said == [("warning", "After the first step 2 of 4 trainable tensors did not move: unused.weight, "
                                "unused.bias: no gradient reached them (unused by the loss?)")]


def test_pure_bf16_updates_lost_to_rounding_are_measured_and_warned_without_compensation():
    import torch

    model = _toy(torch.bfloat16)
    said = _first_step(model, torch.optim.SGD(model.parameters(), lr=1e-6), "sgd")
    lost = [m for lvl, m in said if m.startswith("bf16 weights:")]
    assert len(lost) == 1 and float(lost[0].split("weights: ")[1].split("%")[0]) > 90
    assert "sgd does not compensate: use --optimizer adamw" in lost[0]
    assert any("used.weight, used.bias" in m and "rounded away" in m for _, m in said)
    assert "left the weight unchanged" in lost[0]
    model = _toy(torch.float32)
    said = _first_step(model, torch.optim.SGD(model.parameters(), lr=1e-6), "sgd")
    assert not any(m.startswith("bf16") for _, m in said)           # fp32 weights keep every update


def test_a_run_says_every_tensor_moved(tiny_llama, tmp_path):
    from ftstudio.core.events import LogLine

    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=2,
                    eval_every=0)
    result, events = run(cfg)
    said = [e.message for e in events if isinstance(e, LogLine) and "first step" in e.message]
    n = sum(1 for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(str(tiny_llama)).parameters())
    assert said == [f"After the first step all {n} trainable tensors moved"]


def test_the_windows_log_shows_the_baseline_per_class_figures_and_a_collapse(qtbot):
    from ftstudio.core.events import EvalMetrics
    from ftstudio.gui.monitor import Monitor

    m = Monitor()
    qtbot.addWidget(m)
    figures = class_figures([0] * 10, [0] * 8 + [1] * 2, ["ham", "spam"])
    m.handle(EvalMetrics(step=4, loss=0.5, accuracy=0.8, macro_f1=0.44, majority_baseline=0.8,
                         majority_class="ham", per_class=figures["per_class"], collapsed=figures["collapsed"]))
    m.handle(RunFinished(status="finished", steps=4, train_loss=0.61, train_loss_steps=4,
                         eval={"loss": 0.5, "accuracy": 0.8, **{k: figures[k] for k in figures}}))
    text = m.log.toPlainText()
    assert "majority-class baseline 0.8" in text and "train loss 0.6100 (mean of the last 4 steps)" in text
    assert "per class: ham: precision 80.0%, recall 100.0% (8 rows); spam: precision –, recall 0.0% (2 rows)" in text
    assert text.count("warning: predictions collapsed onto one class") == 2 and "{" not in text
