"""Numerics that do not crash and plans that count what is stored: fp16-mixed survives a non-finite loss, θ0 and
the Fisher are planned at their stored bytes, and the data order costs the same per micro-batch at any size."""
import time

import pytest
import torch

from ftstudio.core.config import RunConfig
from ftstudio.core.events import NonFiniteStep, RunFinished, StepMetrics
from ftstudio.engine.memory import estimate
from ftstudio.engine.train.numerics import Numerics
from ftstudio.engine.train.schedule import plan_schedule
from test_reliability import Faults, _cfg, data  # noqa: F401  (the fixture)
from test_trainer import run


def test_fp16_mixed_survives_a_non_finite_loss(tiny_llama, data, tmp_path, monkeypatch):  # noqa: F811
    """The loss-scaled path on the CPU (torch's CPU GradScaler): a NaN loss is skipped and the run goes on
    (the scaler's step was left open before, so the next unscale_ raised)."""
    import ftstudio.engine.train.numerics as numerics

    monkeypatch.setattr(numerics, "pick_numerics",
                        lambda precision, device: Numerics("fp16-mixed", torch.float32, torch.bfloat16, True))
    Faults(monkeypatch, nan_loss={3})
    result, events = run(_cfg(tiny_llama, data, tmp_path, nonfinite="skip", max_skips=3, max_steps=5))
    assert isinstance(result, RunFinished), result
    assert [(e.what, e.action) for e in events if isinstance(e, NonFiniteStep)] == [("loss", "skipped")]
    assert [e.step for e in events if isinstance(e, StepMetrics)][-1] == 5


SHAPE = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000}


@pytest.mark.parametrize("leaves, copies, nbytes", [
    ({"drift_every": 10}, 1, 4),                                   # θ0 for the drift monitor alone
    ({"l2sp": 0.1, "precision": "bf16"}, 1, 4),                    # fp32 θ0 beside bf16 weights
    ({"ewc": 0.1, "l2sp_anchor": "bf16"}, 2, 2),                   # θ0 and Fisher in bf16
    ({"l2sp": 0.1, "l2sp_anchor": "cpu"}, 0, 4),                   # host memory: nothing on the GPU
])
def test_anchor_copies_are_planned_at_their_stored_bytes(leaves, copies, nbytes):
    run_cfg = RunConfig().replace(device="cuda", **leaves)
    plan = estimate(SHAPE, run_cfg)
    params = plan.params
    assert plan.anchor == copies * nbytes * params


def test_the_data_order_costs_the_same_per_micro_batch_at_any_size():
    def per_batch(n):
        sched = plan_schedule(RunConfig().replace(batch_size=8, max_steps=10), n)
        t0 = time.perf_counter()
        for i in range(200):
            sched.batch_indices(i % sched.batches_per_epoch)
        return (time.perf_counter() - t0) / 200

    small, large = per_batch(1_000), per_batch(200_000)
    assert large < small * 20 + 2e-4   # a shuffle per micro-batch made this ~200x slower


def test_mix_fraction_is_a_share_of_trained_tokens():
    cfg = RunConfig().replace(batch_size=8, max_steps=100, mix_fraction=0.5)
    task, general = [10] * 200, [100] * 50       # general paragraphs ten times longer than task rows
    sched = plan_schedule(cfg, 200, 50, task_tokens=task, general_tokens=general)
    t = sum(task[j] for i in range(100) for j in sched.batch_indices(i))
    g = sum(general[j] for i in range(100) for j in sched.general_indices(i))
    assert g / (g + t) == pytest.approx(0.5, abs=0.02)          # a share of rows gave 0.91 of the tokens
    assert all(len(sched.batch_indices(i)) + len(sched.general_indices(i)) == 8 for i in range(100))
    # recomputable from the micro-batch number alone (a resumed run asks for micro-batch 60 first)
    fresh = plan_schedule(cfg, 200, 50, task_tokens=task, general_tokens=general)
    assert fresh.general_indices(60) == sched.general_indices(60) and fresh.batch_indices(60) == sched.batch_indices(60)


def test_a_schedule_that_cannot_do_what_was_asked_is_said_once():
    from ftstudio.engine.train.schedule import schedule_warning

    cfg = RunConfig().replace(batch_size=16, grad_accum=2, epochs=1.5, warmup_steps=50)
    said = schedule_warning(cfg, plan_schedule(cfg, 20))
    assert said.startswith("Schedule: ") and said.count("Schedule") == 1
    assert "warmup_steps 50" in said and "32 rows" in said and "epochs 1.5 rounded to 2 whole steps (2 epochs)" in said
    assert schedule_warning(RunConfig().replace(batch_size=4, epochs=2.0), plan_schedule(RunConfig().replace(
        batch_size=4, epochs=2.0), 40)) is None


def test_train_says_what_seq_len_dropped_and_cut(tiny_llama, tmp_path):
    import json

    from ftstudio.core.events import LogLine
    from test_trainer import lm_config

    p = tmp_path / "d.jsonl"
    rows = [{"prompt": "the " * 40, "completion": " yes"}] * 2 + [{"prompt": "the cat", "completion": " is good " * 30}] * 6
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, events = run(lm_config(tiny_llama, p, tmp_path / "runs", seq_len=16, max_steps=1, val_fraction=0.0,
                                   instruction_format="text"))
    lines = [e.message for e in events if isinstance(e, LogLine)]
    summary = next(x for x in lines if x.startswith("Data: "))
    assert "2 rows skipped" in summary and "6 rows cut at seq_len" in summary
    assert sum("row skipped" in x for x in lines) == 2


def test_engine_run_refuses_up_front_what_the_cli_refuses(tiny_llama, tmp_path):
    """The GUI calls engine.run directly: a seq_len beyond the model's context ends in one RunFailed that names
    the field, before any run folder exists (the CLI checks the same with engine.check_run)."""
    from ftstudio.core.events import RunFailed
    from ftstudio.engine import run as engine_run
    from test_trainer import lm_config, write_text_data

    events = []
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", seq_len=4096)
    result = engine_run(cfg, events.append)
    assert isinstance(result, RunFailed) and "data.seq_len" in result.reason and "512" in result.reason
    assert events == [result] and not (tmp_path / "runs").exists()


def test_packing_with_data_mixing_trains(tiny_llama, tmp_path):
    """Packed task rows and unpacked general rows share micro-batches (the collator raised KeyError before)."""
    from test_trainer import lm_config, write_text_data

    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", packing=True,
                    mix_fraction=0.3, max_steps=3, eval_every=0)
    result, _ = run(cfg)
    assert isinstance(result, RunFinished), result


def test_train_says_each_data_warning_once(tiny_llama, tmp_path):
    import json

    from ftstudio.core.events import LogLine
    from test_trainer import lm_config

    p = tmp_path / "c.jsonl"
    row = {"messages": [{"role": "user", "content": "hello", "ts": 1}, {"role": "assistant", "content": "yes"}]}
    p.write_text((json.dumps(row) + "\n") * 4)
    result, events = run(lm_config(tiny_llama, p, tmp_path / "runs", max_steps=1, val_fraction=0.0))
    lines = [e.message for e in events if isinstance(e, LogLine) and "'ts' not used" in e.message]
    assert len(lines) == 4   # one per row: the validation pass and the preparation do not both say it
