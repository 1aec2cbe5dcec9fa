"""Evaluation batches of similar lengths (train/evaluate.py): the causal-LM figure is a sum over tokens, so the
batching changes it only by float rounding, while far fewer pad tokens are computed."""
import json

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.engine.data import prepare_data
from ftstudio.engine.models import load_model
from ftstudio.engine.train.evaluate import evaluate


@pytest.fixture(scope="module")
def lm_and_val(tiny_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "d.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(80):  # lengths from 2 to ~40 words, in no order
            fh.write(json.dumps({"text": " ".join(["the party shall pay"] * (1 + (i * 7) % 10)) + f" {i}"}) + "\n")
    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(path), seq_len=64, val_fraction=0.5, seed=1)
    lm = load_model(cfg.model, task="causal-lm")
    prepared = prepare_data(cfg.data, lm.tokenizer, task="causal-lm", seed=1)
    return lm.model.eval(), prepared


def _eval(model, prepared, batch_size, max_batches=None):
    padded = []
    collate = prepared.collate

    def counting(rows):
        out = collate(rows)
        padded.append(int((out["attention_mask"] == 0).sum()))
        return out
    prepared.collate = counting
    try:
        result = evaluate(model, prepared, device="cpu", task="causal-lm", batch_size=batch_size,
                          max_batches=max_batches)
    finally:
        prepared.collate = collate
    return result, sum(padded)


def test_eval_loss_is_the_same_for_any_batch_size_and_pads_less(lm_and_val):
    model, prepared = lm_and_val
    lengths = [len(ex["input_ids"]) for ex in prepared.val]
    assert len(set(lengths)) > 5 and lengths != sorted(lengths)  # the split is not already in length order
    one, pad_one = _eval(model, prepared, 1)  # one row a batch: no padding at all, the reference
    assert pad_one == 0
    for batch_size in (4, 16, 64):
        result, _ = _eval(model, prepared, batch_size)
        assert result["loss"] == pytest.approx(one["loss"], rel=1e-6, abs=0), batch_size
    # Padding: what the split's own order would pad at batch 16, against the length-sorted batches.
    order_pad = sum(max(lengths[i:i + 16]) * len(lengths[i:i + 16]) - sum(lengths[i:i + 16])
                    for i in range(0, len(lengths), 16))
    _, sorted_pad = _eval(model, prepared, 16)
    assert sorted_pad < order_pad / 3


def test_capped_evaluation_scores_the_first_rows_of_the_split(lm_and_val):
    model, prepared = lm_and_val
    capped, _ = _eval(model, prepared, 8, max_batches=1)
    first = type(prepared)(**{**prepared.__dict__, "val": prepared.val[:8]})
    whole, _ = _eval(model, first, 8)
    assert capped["loss"] == pytest.approx(whole["loss"], rel=1e-6)
