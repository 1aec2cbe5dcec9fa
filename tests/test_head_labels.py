"""A classifier whose head already names the data's classes keeps each class's id. Classes were numbered in sorted
order whatever the head said, so a model trained with id2label {0: 'pos', 1: 'neg'} (or an emotion model's
sadness, joy, love, ...) had its head's meanings swapped silently: the same weights now answered 'neg' where they
had answered 'pos', and final/ was saved with the swapped names."""
from __future__ import annotations

import json

import pytest

from ftstudio.core.config import DataConfig, RunConfig
from ftstudio.engine.data.prepare import build_rows
from ftstudio.engine.models.inspect import head_labels

CLASSIFIER = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}


@pytest.mark.parametrize("cfg, expected", [
    ({**CLASSIFIER, "id2label": {"0": "pos", "1": "neg"}}, ["pos", "neg"]),
    ({**CLASSIFIER, "id2label": {"2": "love", "0": "sadness", "1": "joy"}}, ["sadness", "joy", "love"]),
    ({**CLASSIFIER, "id2label": {0: "pos", 1: "neg"}}, ["pos", "neg"]),              # a live config's int keys
    ({**CLASSIFIER, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}, None),            # transformers' defaults
    ({**CLASSIFIER, "id2label": {"0": "a", "2": "b"}}, None),                         # ids with a gap
    ({"architectures": ["BertModel"], "id2label": {"0": "pos", "1": "neg"}}, None),  # no head to keep
])
def test_head_labels_reads_the_trained_head_in_id_order(cfg, expected):
    assert head_labels(cfg) == expected


def _rows(path, labels):
    path.write_text("".join(json.dumps({"text": f"row {i} {lab}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels * 6)))
    return str(path)


def test_the_data_keeps_the_heads_ids_only_for_exactly_its_classes(tmp_path):
    data = DataConfig(dataset=_rows(tmp_path / "d.jsonl", ["neg", "pos"]), val_fraction=0.0)
    assert build_rows(data, "classification", 0).label_names == ["neg", "pos"]
    assert build_rows(data, "classification", 0, ["pos", "neg"]).label_names == ["pos", "neg"]
    assert build_rows(data, "classification", 0, ["pos", "neg", "neutral"]).label_names == ["neg", "pos"]


def test_a_trained_head_keeps_its_meaning_through_a_run(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, \
        BertForSequenceClassification

    from ftstudio.core.events import RunFinished
    from ftstudio.engine.models import demo_model_path
    from ftstudio.engine.train import Trainer

    tok = AutoTokenizer.from_pretrained(demo_model_path())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, id2label={0: "pos", 1: "neg"},
                     label2id={"pos": 0, "neg": 1})
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([8.0, -8.0]))   # the trained head: 'pos', whatever the text
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    data = _rows(tmp_path / "d.jsonl", ["neg", "pos"])
    run = RunConfig().replace(source=str(tmp_path / "base"), dataset=data, output=str(tmp_path / "runs"),
                              run_name="r", max_steps=1, lr=1e-9, batch_size=4, seq_len=16, val_fraction=0.0,
                              eval_every=0, device="cpu", precision="fp32")
    result = Trainer(run, lambda e: None).run()
    assert isinstance(result, RunFinished), result
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "runs" / "r" / "final")
    assert final.config.id2label == {0: "pos", 1: "neg"}
    with torch.no_grad():
        pred = final(**tok(["row 1 neg"], return_tensors="pt")).logits.argmax(-1).item()
    assert final.config.id2label[pred] == "pos"   # what the head said before: a 1e-9 step changes nothing
