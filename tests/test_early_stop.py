"""Early stopping and the best model, on a tiny causal LM made to overfit: it memorises 16 random word
sequences at a high constant LR while the validation loss on 16 others turns up after a few evaluations."""
import json
import random

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import EvalMetrics, RunFinished
from ftstudio.engine.train.early_stop import BestTracker, EarlyStop


def _words_file(path, seed):
    from tiny import WORDS
    rnd = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(16):
            fh.write(json.dumps({"text": " ".join(rnd.choice(WORDS) for _ in range(12))}) + "\n")
    return path


def _overfit_config(tiny_llama, tmp_path, **kw):
    base = dict(source=str(tiny_llama), dataset=str(_words_file(tmp_path / "train.jsonl", 0)),
                val_dataset=str(_words_file(tmp_path / "val.jsonl", 1)), output=str(tmp_path / "runs"),
                max_steps=40, batch_size=8, lr=1e-2, schedule="constant", warmup_steps=0, seq_len=32, eval_every=2,
                device="cpu", precision="fp32", seed=42)
    base.update(kw)
    return RunConfig().replace(**base)


def _run(cfg):
    from ftstudio.engine.train import Trainer
    events = []
    return Trainer(cfg, events.append).run(), events


def test_rising_val_loss_stops_after_patience_and_exports_the_best_step(tiny_llama, tmp_path):
    import torch
    from safetensors.torch import load_file

    cfg = _overfit_config(tiny_llama, tmp_path, run_name="es", early_stop_patience=3, export_best=True)
    result, events = _run(cfg)
    assert isinstance(result, RunFinished) and result.status == "finished", result
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    best = min(evals, key=lambda e: e.loss)
    assert [e.step for e in evals if e.best][-1] == best.step == result.best_step
    # Stopped after exactly `patience` evaluations without improvement, long before max_steps.
    assert result.steps == best.step + 3 * cfg.eval.eval_every < cfg.train.max_steps
    assert all(e.loss >= best.loss for e in evals if e.step > best.step)
    assert "Early stop" in result.stop_reason and f"step {best.step}" in result.stop_reason
    assert result.eval["loss"] == pytest.approx(best.loss)

    # final/ holds the best step's weights: the same as a run of the same seed that ends at that step.
    ref, _ = _run(_overfit_config(tiny_llama, tmp_path, run_name="ref", max_steps=best.step, eval_every=0))
    got = load_file(f"{result.final_model}/model.safetensors")
    want = load_file(f"{ref.final_model}/model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_without_export_best_the_last_weights_are_exported(tiny_llama, tmp_path):
    cfg = _overfit_config(tiny_llama, tmp_path, run_name="last", early_stop_patience=2, max_steps=24)
    result, events = _run(cfg)
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    assert result.best_step is not None and result.steps < 24
    assert result.eval["loss"] == pytest.approx(evals[-1].loss)   # the last evaluation, not the best
    assert result.eval["loss"] > min(e.loss for e in evals)


def test_tracker_rules():
    t = BestTracker("accuracy", patience=2)
    assert t.update(2, {"accuracy": 0.5}, None) and t.best_step == 2
    assert not t.update(4, {"accuracy": 0.5}, None)           # a tie is no improvement
    t.check_patience(4)
    assert not t.update(6, {"accuracy": 0.4}, None)
    with pytest.raises(EarlyStop, match="not improved for 2 evaluations"):
        t.check_patience(6)
    loss = BestTracker("loss")
    assert loss.update(1, {"loss": 2.0}, None) and loss.update(2, {"loss": 1.0}, None)
    assert not loss.update(3, {"loss": float("nan")}, None)
    loss.check_patience(3)  # patience 0: never stops


def test_config_checks():
    with pytest.raises(ConfigError, match="eval.metric"):
        RunConfig().replace(metric="bleu")
    with pytest.raises(ConfigError, match="early_stop_patience"):
        RunConfig().replace(early_stop_patience=-1)
    with pytest.raises(ConfigError, match="export_best"):
        RunConfig().replace(export_best=True, gpus=[0, 1])
    with pytest.raises(ConfigError, match="classifiers"):
        RunConfig().replace(metric="accuracy", task="causal-lm")


def test_host_room_for_the_best_weights_is_checked(monkeypatch):
    import psutil
    import torch

    from ftstudio.engine.train.early_stop import check_host_room

    model = torch.nn.Linear(100, 10)  # 1010 fp32 values: 4040 bytes
    assert check_host_room(model) == 4040
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("VM", (), {"available": 4000})())
    with pytest.raises(ConfigError, match="best weights needs 0.00 GB of host RAM"):
        check_host_room(model)
