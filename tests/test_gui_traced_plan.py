"""The traced memory plan on the GUI's bar (gui/traced_plan.py): the closed form first, then the plan `ftstudio
estimate` makes for the same run, computed off the GUI thread while the window keeps handling events; a result
asked for before the user's last edit is not shown."""
from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QTimer  # noqa: E402

from ftstudio.core.config import RunConfig  # noqa: E402

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)


def test_the_bar_shows_the_traced_plan_without_freezing_the_window(qtbot, tmp_path):
    from ftstudio.engine.memory import estimate
    from ftstudio.engine.models import shape_from_config
    from ftstudio.engine.train.plan_run import plan_run
    from ftstudio.gui.memory_bar import MemoryBar
    from ftstudio.gui.traced_plan import TracedPlanner, describe

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the cat and the dog " * (2 + i % 7)}) + "\n" for i in range(30)))
    cfg = RunConfig().replace(batch_size=2, seq_len=64, max_steps=10, dataset=str(data))
    bar = MemoryBar()
    qtbot.addWidget(bar)
    bar.capacity, bar.capacity_label = 80e9, "80 GB card"
    bar.set_plan(estimate(shape_from_config(LLAMA), cfg, 1), how="closed form; tracing the model's own step…")
    assert bar.plan.method == "closed form" and "tracing" in bar.summary.text()

    planner = TracedPlanner(delay_ms=0)
    shown = []
    planner.planned.connect(lambda gen, rp: planner.is_current(gen) and (shown.append(rp),
                                                                          bar.set_traced(rp.plan, describe(rp))))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    stale = planner.request(LLAMA, cfg.replace(batch_size=64), 1, None)
    latest = planner.request(LLAMA, cfg, 1, None)          # the user edited again before the trace started
    assert stale != latest
    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: bool(shown), timeout=120_000)
    timer.stop()
    planner.stop()
    ticks = [t0, *ticks]
    assert len(shown) == 1 and shown[0].config.train.batch_size == 2          # only the newest request ran
    assert bar.plan.method == "traced" and "traced plan" in bar.summary.text()
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 1.0, "the event loop stalled while tracing"
    same = plan_run(cfg, model_config=LLAMA, gpus=1, device="cuda:0")           # the config's data read, as
    assert bar.plan.peak_allocated == same.plan.peak_allocated                 # `estimate --config` does
    assert shown[0].lines == same.lines and any(ln.startswith("Data: ") for ln in same.lines)


def test_a_failed_trace_leaves_the_closed_form_and_says_why(qtbot):
    from ftstudio.gui.traced_plan import TracedPlanner

    planner = TracedPlanner(delay_ms=0)
    with qtbot.waitSignal(planner.failed, timeout=60_000) as blocker:
        planner.request({"model_type": "llama"}, RunConfig().replace(batch_size=1, seq_len=8), 1, None)
    planner.stop()
    assert blocker.args[1]                  # a one-line reason for the bar
