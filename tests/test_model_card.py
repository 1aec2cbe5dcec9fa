"""final/README.md is a model card the Hub and huggingface_hub read: base model, license from the base, datasets,
tags, the configuration, final and best metrics, forgetting and memory figures, and how to run it."""
from __future__ import annotations

import json

import pytest
import yaml

from ftstudio.core.config import RunConfig
from ftstudio.engine.models.card import base_license, base_model_id, card_facts, write_model_card


def _run_dir(tmp_path, source: str, dataset: str, events: list[dict]):
    run = tmp_path / "20261206-101500-my-run"
    (run / "final").mkdir(parents=True)
    cfg = RunConfig().to_dict()
    cfg["model"]["source"], cfg["data"]["dataset"] = source, dataset
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e) + "\n")
    return run


EVENTS = [
    {"event": "run_started", "run_dir": "x", "model": "m", "task": "causal-lm", "device": "cuda:0",
     "precision": "bf16-mixed", "params": 134515008, "total_steps": 40, "train_rows": 900, "val_rows": 100},
    {"event": "retention", "step": 0, "loss": 2.5, "perplexity": 12.2},
    *({"event": "step", "step": i, "loss": 3.0 - i / 20, "lr": 1e-5, "grad_norm": 1.0, "tokens_per_s": 1e4}
      for i in range(1, 41)),
    {"event": "eval", "step": 20, "loss": 1.2, "perplexity": 3.32, "best": True},
    {"event": "eval", "step": 40, "loss": 1.3, "perplexity": 3.67, "best": False},
    {"event": "retention", "step": 40, "loss": 2.9, "perplexity": 18.2},
    {"event": "drift", "step": 40, "layers": {}, "total": 0.0123},
    {"event": "memory", "step": 40, "device": "cuda:0", "weights": 269_000_000, "gradients": 269_000_000,
     "optimizer": 1_076_000_000, "allocated_peak": 3_100_000_000},
]


def test_card_parses_and_carries_the_run(tmp_path):
    base = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc"
    base.mkdir(parents=True)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: en\n---\n# SmolLM2\n", encoding="utf-8")
    run = _run_dir(tmp_path, str(base), "HuggingFaceH4/no_robots", EVENTS)
    path = write_model_card(run / "final")
    assert path == run / "final" / "README.md"
    facts = card_facts(run / "final")
    assert facts["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert facts["license"] == "apache-2.0"
    assert facts["datasets"] == ["HuggingFaceH4/no_robots"]
    assert {"ftstudio", "full-fine-tuning", "causal-lm"} <= set(facts["tags"])
    assert facts["pipeline_tag"] == "text-generation" and facts["library_name"] == "transformers"
    text = path.read_text(encoding="utf-8")
    assert "| final | 40 | 1.3 |" in text and "| best | 20 | 1.2 |" in text
    assert "mean of the last 10 logged steps" in text
    assert "2.5 at step 0 → 2.9 at step 40" in text and "0.0123" in text
    assert "allocator peak 3.10 GB" in text and "134,515,008 parameters" in text
    assert "--jinja" in text and "ollama create" in text
    assert "source: " + str(base) in text  # the configuration that reproduces the run


def test_a_local_file_dataset_is_named_in_the_body_not_as_a_hub_dataset(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("{}\n")
    run = _run_dir(tmp_path, str(tmp_path / "my-llama"), str(data), EVENTS[:1])
    write_model_card(run / "final")
    facts = card_facts(run / "final")
    assert "datasets" not in facts and "base_model" not in facts and "license" not in facts
    assert str(data) in (run / "final" / "README.md").read_text(encoding="utf-8")


def test_ids_and_licenses():
    assert base_model_id("demo") == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert base_model_id("./not/a-hub-id/really") is None
    assert base_license("demo", None) == "apache-2.0"


def test_save_final_writes_the_card_from_its_run_folder(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.engine.models.export import save_final

    run = _run_dir(tmp_path, str(tiny_llama), "chats.jsonl", EVENTS)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    save_final(model, tok, run / "final")
    assert card_facts(run / "final")["pipeline_tag"] == "text-generation"
    bare = tmp_path / "bare-export"
    save_final(model, tok, bare)  # no run folder around it: no card, no error
    assert not (bare / "README.md").exists()


@pytest.mark.parametrize("task,tag", [("classification", "text-classification")])
def test_classifier_card(tmp_path, task, tag):
    events = [dict(EVENTS[0], task=task, labels=["ham", "spam"])]
    run = _run_dir(tmp_path, "demo", "demo", events)
    write_model_card(run / "final")
    assert card_facts(run / "final")["pipeline_tag"] == tag
    assert "Labels: ham, spam" in (run / "final" / "README.md").read_text(encoding="utf-8")
