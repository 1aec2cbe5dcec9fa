"""The forgetting remedies wired into real runs: retention and drift events, mixing at the asked fraction,
L2-SP keeping the weights closer to θ0 than plain fine-tuning."""
import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.events import DriftMetrics, LogLine, RetentionMetrics, RunFinished
from ftstudio.engine.train.schedule import plan_schedule
from test_trainer import lm_config, run, write_text_data


@pytest.mark.parametrize("fraction,batch", [(0.1, 4), (0.25, 8), (0.5, 2), (0.1, 16)])
def test_mixing_puts_general_rows_in_batches_at_the_fraction(fraction, batch):
    cfg = RunConfig().replace(mix_fraction=fraction, batch_size=batch, max_steps=200)
    s = plan_schedule(cfg, n_examples=37, n_general=11)
    general = task = 0
    seen_task = []
    for i in range(200):
        t, g = s.batch_indices(i), s.general_indices(i)
        assert len(t) + len(g) == batch
        assert all(0 <= x < 11 for x in g) and all(0 <= x < 37 for x in t)
        general += len(g)
        task += len(t)
        seen_task += t
        assert abs(general - fraction * batch * (i + 1)) <= 1  # the running share tracks f within one row
    # every task row is used once per pass over the data
    first_pass = seen_task[:37]
    assert sorted(first_pass) == list(range(37))


def test_no_mixing_keeps_plain_epochs():
    s = plan_schedule(RunConfig().replace(batch_size=4, max_steps=10), n_examples=10)
    assert s.batches_per_epoch == 3
    epoch0 = s.batch_indices(0) + s.batch_indices(1) + s.batch_indices(2)
    assert sorted(epoch0) == list(range(10)) and len(s.batch_indices(2)) == 2
    assert s.general_indices(0) == []


def test_retention_drift_and_summary_events(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=6,
                    eval_every=3, retention_eval=True, drift_every=2, mix_fraction=0.25, l2sp=0.1)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    retention = [e for e in events if isinstance(e, RetentionMetrics)]
    assert [e.step for e in retention] == [0, 3, 6]
    assert all(e.perplexity > 1 for e in retention)
    drift = [e for e in events if isinstance(e, DriftMetrics)]
    assert drift[0].step == 0 and drift[0].total == 0.0
    assert drift[-1].total > 0 and set(drift[-1].layers) >= {"embeddings", "layer.0", "layer.1", "head"}
    assert any(isinstance(e, LogLine) and e.message.startswith("Forgetting:") for e in events)


def test_l2sp_run_drifts_less_than_plain_run(tiny_llama, tmp_path):
    data = write_text_data(tmp_path / "d.jsonl")
    totals = {}
    for lam in (0.0, 5.0):
        cfg = lm_config(tiny_llama, data, tmp_path / "runs", run_name=f"l2sp{lam}", max_steps=10, lr=1e-2,
                        drift_every=10, l2sp=lam, val_fraction=0.0)
        result, events = run(cfg)
        assert isinstance(result, RunFinished), result
        totals[lam] = [e for e in events if isinstance(e, DriftMetrics)][-1].total
    assert totals[5.0] < 0.7 * totals[0.0], totals
