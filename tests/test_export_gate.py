"""The export gate: final/ reloaded in a fresh process with stock transformers and compared with the trained model;
a broken export is an error, never "done"."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ftstudio.core.errors import ModelError
from ftstudio.engine.models import gate


@pytest.fixture
def trained(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():  # "training": every weight moved, so a stale or random tensor would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def test_a_good_export_passes_with_logits_checked_in_a_fresh_process(trained, tmp_path, monkeypatch):
    from ftstudio.engine.models.export import save_final

    monkeypatch.setenv("FTSTUDIO_EXPORT_GATE", "1")
    model, tok = trained
    save_final(model, tok, tmp_path / "final")  # gate on: raises if anything is off
    summary = gate.check_export(tmp_path / "final", model, tok)
    assert "reloaded in a fresh process" in summary and "logits agree" in summary and "top-1 100%" in summary


def test_a_changed_tensor_is_caught_by_the_logits_probe(trained, tmp_path):
    model, tok = trained
    model.save_pretrained(tmp_path / "final")
    tok.save_pretrained(tmp_path / "final")
    path = tmp_path / "final" / "model.safetensors"
    weights = load_file(path)
    weights["model.layers.0.mlp.down_proj.weight"] = torch.randn_like(weights["model.layers.0.mlp.down_proj.weight"])
    weights["lm_head.weight"] = torch.randn_like(weights["lm_head.weight"]) if "lm_head.weight" in weights else None
    save_file({k: v for k, v in weights.items() if v is not None}, path, metadata={"format": "pt"})
    with pytest.raises(ModelError, match="answers differently from the trained model"):
        gate.check_export(tmp_path / "final", model, tok)


def test_a_missing_tensor_is_named(trained, tmp_path):
    model, tok = trained
    model.save_pretrained(tmp_path / "final")
    path = tmp_path / "final" / "model.safetensors"
    weights = load_file(path)
    del weights["model.norm.weight"]
    save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"1 tensors missing \(e.g. model.norm.weight\)"):
        gate.check_export(tmp_path / "final", model, tok)


def test_a_truncated_weights_file_is_an_error_not_done(trained, tmp_path):
    model, tok = trained
    model.save_pretrained(tmp_path / "final")
    path = tmp_path / "final" / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"model.safetensors: the exported weights file is damaged or incomplete"):
        gate.check_export(tmp_path / "final", model, tok)


def test_a_large_model_is_checked_by_its_keys_without_a_second_copy(trained, tmp_path, monkeypatch):
    model, tok = trained
    model.save_pretrained(tmp_path / "final")
    monkeypatch.setattr(gate, "PROBE_MAX_PARAMS", 10)
    summary = gate.check_export(tmp_path / "final", model, tok)
    assert "match the architecture built in a fresh process" in summary and "logits" not in summary.split("(")[0]
