"""Planned against measured, per phase of the step (train/memory_log.py): the meter's phase peaks on the CPU (the
process's resident set), and a CPU run whose memory snapshots in metrics.jsonl carry the phases and its
activations measured from the step's resident-set peak."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from ftstudio.engine.train.memory_log import PhaseMeter

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the resident-set peak is read from /proc")


METER_CHECK = """
import torch
from ftstudio.engine.train.memory_log import PhaseMeter
meter = PhaseMeter("cpu")
meter.begin(True)
x = torch.ones(16 * 2**20)                   # 64 MiB, touched: resident
meter.mark("forward")
del x
meter.mark("backward")                       # x was resident as this phase began
meter.mark("optimizer step")                 # ... and freed before this one
phases, start, _ = meter.take()
assert phases["forward"] - start >= 60 * 2**20, (phases, start)
assert phases["optimizer step"] - start < 32 * 2**20, (phases, start)
assert meter.take()[0] == {}                 # taken: the next snapshot starts afresh
meter.begin(False)
meter.mark("forward")
assert meter.take()[0] == {}                 # steps without a snapshot are not measured
"""


@linux
def test_the_meter_sees_a_phase_allocate_and_resets_between_phases():
    # A fresh interpreter: the resident set grows only by pages newly made resident, and a long test process may
    # hand the 64 MiB out of memory an earlier test freed but the C allocator kept (the meter then sees nothing).
    import subprocess
    done = subprocess.run([sys.executable, "-c", METER_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@linux
def test_a_cpu_run_records_each_phase_and_its_activations(tiny_llama, tmp_path):
    from test_trainer import lm_config, run, write_text_data

    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=4,
                    memory_snapshot_every=2, eval_every=2, checkpoint_every=2, export=False)
    result, _ = run(cfg)
    assert result.status == "finished", result
    lines = [json.loads(x) for x in (tmp_path / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    snaps = [e for e in lines if e.get("event") == "memory"]
    assert [s["step"] for s in snaps] == [1, 2, 4]
    first, second, last = snaps
    assert set(first["measured_phases"]) == {"forward", "backward", "optimizer step"}
    assert all(v > 0 for v in first["measured_phases"].values())
    assert first["activations"] is not None and first["activations"] >= 0
    # step 2 evaluated and saved a checkpoint after its snapshot: they show in the next one, beside step 4's phases
    assert {"evaluation", "checkpoint", "forward", "backward"} <= set(last["measured_phases"])
    assert second["measured_phases"] and "evaluation" not in second["measured_phases"]


def test_the_logged_plan_is_made_for_the_runs_own_rows(tiny_llama, tmp_path):
    """The plan a CUDA run logs beside its measured peaks is the plan of its real rows: short rows are planned at the
    run's longest batch (as ``estimate --dataset`` plans them), not as rows filling seq_len (a SmolLM2 run on
    109-token rows at seq_len 256 logged a plan 71 % over its peak)."""
    from types import SimpleNamespace

    from test_trainer import lm_config, write_text_data

    from ftstudio.engine import data as data_mod
    from ftstudio.engine import models as models_mod
    from ftstudio.engine.train.memory_log import _plan
    from ftstudio.engine.train.plan_run import plan_run, read_rows
    from ftstudio.engine.train.schedule import plan_schedule, row_stats

    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", seq_len=512,
                    batch_size=8, device="cuda", precision="bf16-mixed", fast_defaults=False)
    model_config = json.loads((tiny_llama / "config.json").read_text())
    prepared = data_mod.prepare_data(cfg.data, models_mod.load_tokenizer(cfg.model), task="causal-lm", seed=3)
    sched = plan_schedule(cfg, len(prepared.train), 0, *row_stats(prepared.train, [], cfg))
    trainer = SimpleNamespace(cfg=cfg, compiled=False, _model_config=model_config,
                              _phases=PhaseMeter("cpu", (prepared, sched)))
    logged = _plan(trainer, "cuda:0")
    rows = read_rows(cfg)
    assert rows.longest < 64                                   # short rows, far below seq_len
    assert logged.peak_allocated == plan_run(cfg, model_config=model_config, device="cuda:0",
                                             rows=rows).plan.peak_allocated
    trainer._phases = PhaseMeter("cpu")                        # no rows known: rows filling seq_len, a larger plan
    assert _plan(trainer, "cuda:0").peak_allocated > logged.peak_allocated


def test_the_plan_is_set_against_what_was_measured_after_the_first_step(monkeypatch):
    """The first step's forward and backward run before the optimizer has made its state, so its peak is below the
    plan by that state (an OLMo-2 run logged "+29.3 %" against a plan its later steps met to 0.0 %): the comparison
    is said once, from the second snapshot, against the largest peak so far."""
    from types import SimpleNamespace

    from ftstudio.core.events import LogLine, MemorySnapshot
    from ftstudio.engine import memory
    from ftstudio.engine.train import memory_log

    peaks = iter([40_590_000_000, 52_500_000_000, 52_400_000_000])
    monkeypatch.setattr(memory, "measure", lambda model, opt, device, step: MemorySnapshot(
        step=step, device=device, weights=1, gradients=1, optimizer=1, allocated_peak=next(peaks)))
    plan = SimpleNamespace(method="traced", peak_allocated=52_500_000_000, peak_phase="forward/backward", parts={})
    said: list[str] = []
    trainer = SimpleNamespace(optimizer=None, step=1, _model_config={"model_type": "llama"}, _phases=None,
                              report=lambda e: said.append(e.message) if isinstance(e, LogLine) else None)
    monkeypatch.setattr(memory_log, "_plan", lambda t, device: plan)
    for step in (1, 2, 3):
        trainer.step = step
        snap = memory_log.snapshot(trainer, None, "cuda:0")
        assert snap.planned_peak == plan.peak_allocated
    compared = [m for m in said if "against the allocator" in m]
    assert len(compared) == 1 and "measured 52.50 GB over steps 1–2 (+0.0%)" in compared[0], said
    assert not any("+29" in m for m in said)
