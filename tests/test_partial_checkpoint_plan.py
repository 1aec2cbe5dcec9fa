"""Plans of checkpointed compiled runs (issue 33): the traced step of a compiled, checkpointed run (transformers
5.2x checkpoints a layer's ``forward`` itself, which put the checkpoint inside the traced graph and failed), and
checkpointing only the first k of L blocks, planned from the traced plans of all and none. CPU, fake tensors."""
import pytest

from ftstudio.core.config import RunConfig
from ftstudio.engine.memory.traced import plan
from ftstudio.engine.train.fast_path import traced_planner
from ftstudio.engine.train.trace_loss import trainer_loss

pytestmark = pytest.mark.slow      # compiled AOT traces on fake tensors: ~40 s for the file on 2 cores

TINY = dict(model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)


def _run(**kw):
    return RunConfig().replace(val_fraction=0.0, device="cuda", batch_size=2, seq_len=64, compile=True,
                               precision="bf16", **kw)


_KEPT: dict = {}


def _plan(run):
    key = repr(run)
    if key not in _KEPT:
        _KEPT[key] = plan(TINY, run, 1, "cuda:0", loss_fn=trainer_loss)
    return _KEPT[key]


def test_a_compiled_checkpointed_step_is_traced():
    every = _plan(_run(activation_checkpointing=True))
    none = _plan(_run())
    assert every.method == "traced", every.notes
    assert every.peak_allocated < none.peak_allocated


def test_checkpointing_some_blocks_lies_between_all_and_none_linear_in_the_blocks():
    every = _plan(_run(activation_checkpointing=True))
    none = _plan(_run())
    peaks = []
    for k in (1, 2, 3):
        some = _plan(_run(activation_checkpointing=True, checkpoint_blocks=k))
        assert some.method == "traced" and f"the first {k} of 4 blocks" in some.notes[0]
        expected = max(every.peak_allocated, round(none.peak_allocated - k / 4 * (none.peak_allocated
                                                                                  - every.peak_allocated)))
        assert some.peak_allocated == expected
        assert some.weights == none.weights and some.optimizer == none.optimizer
        peaks.append(some.peak_allocated)
    assert none.peak_allocated >= peaks[0] >= peaks[1] >= peaks[2] >= every.peak_allocated


def test_the_planner_traces_both_ends_once_for_every_k(monkeypatch):
    import ftstudio.engine.memory.traced as traced

    calls = []
    real = traced._trace
    monkeypatch.setattr(traced, "_trace", lambda *a, **k: calls.append(1) or real(*a, **k))
    tp = traced_planner("cuda:0")
    for k in (1, 2, 3):
        assert tp(TINY, _run(activation_checkpointing=True, checkpoint_blocks=k)).method == "traced"
    assert len(calls) == 2                       # all and none, traced once; each k planned from them
