"""GGUF de-quantisation as a determinate bar: the engine counts the tensors transformers de-quantises
(LoadProgress events), the monitor's bar follows them with an ETA, metrics.jsonl keeps only the end."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

gguf = pytest.importorskip("gguf")
from test_models_gguf import tiny_gguf  # noqa: E402,F401  (fixture)

from ftstudio.core.config import ModelConfig  # noqa: E402
from ftstudio.core.events import LoadProgress, RunStarted  # noqa: E402


def test_a_gguf_load_reports_every_tensor_done_of_all(tiny_gguf, monkeypatch):  # noqa: F811
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    from ftstudio.engine.models import ParseOnce, load_model, load_tokenizer
    from ftstudio.engine.models import gguf as ours

    monkeypatch.setattr(ours, "PROGRESS_EVERY_S", 0.0)     # report each tensor (a real load: throttled)
    total = len(gguf.GGUFReader(str(tiny_gguf)).tensors)
    real = hf_gguf.tqdm
    seen = []
    cfg = ModelConfig(source=str(tiny_gguf))
    with ParseOnce(progress=lambda done, n, s: seen.append((done, n, s))):
        load_model(cfg, task="causal-lm", tokenizer=load_tokenizer(cfg))
    assert [(d, n) for d, n, _ in seen] == [(i, total) for i in range(total + 1)]
    assert all(b[2] >= a[2] for a, b in zip(seen, seen[1:]))   # elapsed only grows
    assert hf_gguf.tqdm is real                                 # closed: transformers' own tqdm is back


def test_reports_are_throttled_but_keep_the_first_and_the_last(monkeypatch):
    from ftstudio.engine.models import gguf as ours

    clock = iter(range(100))
    monkeypatch.setattr(ours, "time", SimpleNamespace(monotonic=lambda: next(clock) * 0.1))   # 0.1 s a tensor
    seen = []
    bars = []
    wrapped = ours.counting_tqdm(lambda d, n, s: seen.append(d), real_tqdm=lambda it, **kw: bars.append(kw) or it)
    assert list(wrapped(list("abcdefgh"), desc="x")) == list("abcdefgh")   # the same items, in order
    assert bars == [{"desc": "x"}]                                           # the real bar still runs
    assert seen[0] == 0 and seen[-1] == 8 and len(seen) < 9 and seen == sorted(seen)


def test_only_the_end_of_a_load_goes_into_metrics_jsonl(tmp_path):
    from ftstudio.core.runs import read_metrics
    from ftstudio.engine.sinks import MetricsWriter

    w = MetricsWriter(tmp_path / "metrics.jsonl")
    for done in range(0, 11):
        w(LoadProgress("de-quantising GGUF tensors", done, 10, done * 0.5))
    w.close()
    assert [(e["done"], e["elapsed_s"]) for e in read_metrics(tmp_path)] == [(10, 5.0)]


@pytest.fixture
def monitor(shown_monitor):
    return shown_monitor((1280, 800))


def test_the_monitors_bar_follows_the_tensors_done(monitor):
    import collections

    events = collections.deque()
    monitor.attach(events)
    monitor.drain()
    assert monitor.progress.maximum() == 1 and "starting" in monitor.progress.format()   # not counted yet
    events.append(LoadProgress("de-quantising GGUF tensors", 0, 200, 0.0))
    events.append(LoadProgress("de-quantising GGUF tensors", 50, 200, 10.0))
    monitor.drain()                                        # the drain's "waited" text does not overwrite it
    bar = monitor.progress
    assert (bar.value(), bar.maximum()) == (50, 200)
    assert bar.format() == "starting: de-quantising GGUF tensors %v / %m · elapsed 0:10 · ETA 0:30"
    assert bar.text().startswith("starting: de-quantising GGUF tensors 50 / 200")
    events.append(LoadProgress("de-quantising GGUF tensors", 150, 200, 20.0))
    monitor.drain()
    assert bar.value() / bar.maximum() == 0.75 and "ETA 0:07" in bar.format()
    events.append(LoadProgress("de-quantising GGUF tensors", 200, 200, 26.0))
    monitor.drain()
    assert "all 200 done in 0:26" in bar.format() and "ETA" not in bar.format()
    events.append(RunStarted(run_dir="r", model="m", task="causal-lm", device="cpu", precision="fp32", params=1,
                             total_steps=40, train_rows=8, val_rows=2))
    monitor.drain()
    assert (bar.value(), bar.maximum()) == (0, 40) and bar.format() == "step %v / %m"   # the run's own bar
    monitor.detach()


@pytest.mark.skipif(not os.environ.get("FTSTUDIO_SHOTS"), reason="screenshots: FTSTUDIO_SHOTS=DIR")
def test_screenshot(monitor, qtbot):
    import collections

    events = collections.deque([LoadProgress("de-quantising GGUF tensors", 123, 291, 41.0)])
    monitor.attach(events)
    monitor.drain()
    qtbot.wait(50)
    monitor.progress.grab().save(os.path.join(os.environ["FTSTUDIO_SHOTS"], "gguf-dequant-progress.png"))
    monitor.detach()


def test_a_gguf_run_reports_its_de_quantising_to_the_window(tiny_gguf, tmp_path):  # noqa: F811
    from test_trainer import lm_config, run, write_text_data

    from ftstudio.core.events import RunFinished
    from ftstudio.core.runs import read_metrics

    cfg = lm_config(tiny_gguf, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=1)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    loads = [e for e in events if isinstance(e, LoadProgress)]
    total = len(gguf.GGUFReader(str(tiny_gguf)).tensors)
    assert loads[0].done == 0 and (loads[-1].done, loads[-1].total) == (total, total)
    first_run_event = next(i for i, e in enumerate(events) if isinstance(e, RunStarted))
    assert events.index(loads[-1]) < first_run_event                  # all before the first step's bar
    kept = [e for e in read_metrics(events[first_run_event].run_dir) if e.get("event") == "load_progress"]
    assert [(e["done"], e["total"]) for e in kept] == [(total, total)]
