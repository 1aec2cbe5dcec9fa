"""The next step's batches are collated during this step's backward on a GPU (trainer._collate_ahead): the run
must read exactly the batches, in exactly the order, of a run that collates each step when it starts, through
gradient accumulation, data mixing, a skipped non-finite step and a stop + resume. Forced on here on the CPU."""
from __future__ import annotations

import pytest

from ftstudio.core.control import Control
from ftstudio.core.events import RunFinished, StepMetrics
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, run, write_text_data


def _record(monkeypatch, nan_at=()):
    """The input_ids of every training forward (1-based count); NaN loss on the forwards in ``nan_at``."""
    import ftstudio.engine.train.loss as ml

    seen, real = [], ml.causal_lm_loss

    def loss_fn(model, batch, *, chunked):
        loss = real(model, batch, chunked=chunked)
        if model.training:
            seen.append(batch["input_ids"].clone())
            if len(seen) in nan_at:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(ml, "causal_lm_loss", loss_fn)
    return seen


def _weights(result):
    from safetensors.torch import load_file
    return load_file(f"{result.final_model}/model.safetensors")


@pytest.mark.parametrize("kw", [{"grad_accum": 2}, {"mix_fraction": 0.25}, {"nan_at": (5,)}])
def test_collating_ahead_trains_on_the_same_batches_in_the_same_order(tiny_llama, tmp_path, monkeypatch, kw):
    kw = dict(kw)
    nan_at = kw.pop("nan_at", ())
    data = write_text_data(tmp_path / "d.jsonl", n=40)
    runs, seen = {}, _record(monkeypatch, nan_at)
    for ahead in (False, True):
        monkeypatch.setattr(Trainer, "_collate_ahead", staticmethod(lambda device, a=ahead: a))
        seen.clear()
        cfg = lm_config(tiny_llama, data, tmp_path / f"runs-{ahead}", max_steps=7, eval_every=0, **kw)
        result, events = run(cfg)
        assert isinstance(result, RunFinished), result
        runs[ahead] = (list(seen), [e.loss for e in events if isinstance(e, StepMetrics)], _weights(result))
    (seen0, loss0, w0), (seen1, loss1, w1) = runs[False], runs[True]
    assert len(seen0) == len(seen1) and all(a.equal(b) for a, b in zip(seen0, seen1))
    assert loss0 == loss1
    assert all(w0[k].equal(w1[k]) for k in w0)


def test_a_run_stopped_with_batches_collated_ahead_resumes_on_the_batch_it_had_not_trained(tiny_llama, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setattr(Trainer, "_collate_ahead", staticmethod(lambda device: True))
    data = write_text_data(tmp_path / "d.jsonl", n=40)
    seen = _record(monkeypatch)
    whole, _ = run(lm_config(tiny_llama, data, tmp_path / "whole", max_steps=6, eval_every=0))
    reference = list(seen)
    seen.clear()
    control = Control()
    cfg = lm_config(tiny_llama, data, tmp_path / "parts", max_steps=6, eval_every=0)

    def stop_after_three(event):
        if isinstance(event, StepMetrics) and event.step == 3:
            control.request_stop()        # step 4's batches were collated during step 3's backward

    half = Trainer(cfg, stop_after_three, control).run()
    assert half.status == "stopped" and half.steps == 3 and len(seen) == 3
    resumed, _ = run(cfg, resume_from=tmp_path / "parts" / "r")
    assert isinstance(resumed, RunFinished) and resumed.steps == 6
    assert len(seen) == 6 and all(a.equal(b) for a, b in zip(seen, reference))
    assert all(_weights(resumed)[k].equal(v) for k, v in _weights(whole).items())
