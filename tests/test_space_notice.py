"""A run whose output disk cannot hold what it writes at its end (final/ beside the checkpoint that keeps its
weights safe) trained to the end and only then said "the disk is full": hours of GPU time for a run that ended
with no final/ and, without periodic checkpoints, no weights. It is now said before the first step."""
from __future__ import annotations

from ftstudio.core.events import LogLine, StepMetrics
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, write_text_data


def _events(cfg):
    events = []
    Trainer(cfg, events.append).run()
    return events


def test_a_disk_too_small_for_the_end_is_said_before_the_first_step(tiny_llama, tmp_path, monkeypatch):
    import ftstudio.core.atomic as atomic

    data = write_text_data(tmp_path / "d.jsonl", n=16)
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=1, eval_every=0)
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 1000)   # 1 kB left where the run folder is
    events = _events(cfg)
    said = [i for i, e in enumerate(events) if isinstance(e, LogLine) and "free on its disk" in e.message]
    first_step = next(i for i, e in enumerate(events) if isinstance(e, StepMetrics))
    assert said and said[0] < first_step
    line = events[said[0]]
    assert line.level == "warning" and "final/" in line.message and "a checkpoint" in line.message
    assert "choose another --output" in line.message


def test_enough_space_says_nothing(tiny_llama, tmp_path, monkeypatch):
    import ftstudio.core.atomic as atomic

    data = write_text_data(tmp_path / "d.jsonl", n=16)
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 10**12)
    events = _events(lm_config(tiny_llama, data, tmp_path / "runs", max_steps=1, eval_every=0))
    assert not [e for e in events if isinstance(e, LogLine) and "free on its disk" in e.message]
