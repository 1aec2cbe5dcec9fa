"""The shard-by-shard loader (models/shards.py): a device load equals from_pretrained's, one shard open at a time.

Tiny models saved with max_shard_size="100KB" (many shards), loaded on device="cpu" (the same code as a GPU:
only the device string differs) and compared tensor by tensor against transformers' from_pretrained.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

from ftstudio.core.config import ModelConfig
from ftstudio.engine.models import load_model, quiet_transformers, shards
from tiny import save_tiny_bert, save_tiny_causal_bpe

quiet_transformers()
SHARD = "100KB"


def _sharded(path, arch="llama", tie=False, eos_extra=None):
    folder = save_tiny_causal_bpe(path, arch, tie=tie)
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder, max_shard_size=SHARD)
    for f in folder.glob("*.safetensors"):  # save_pretrained left the first single file next to the shards
        if f.name == "model.safetensors":
            f.unlink()
    if eos_extra is not None:  # a generation_config.json that differs from config.json's eos
        cfg = json.loads((folder / "config.json").read_text())
        GenerationConfig(eos_token_id=[cfg["eos_token_id"], eos_extra]).save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) >= 4
    return folder


def _reference(auto, folder, dtype, **kw):
    return auto.from_pretrained(folder, dtype=dtype, local_files_only=True, device_map={"": "cpu"},
                                output_loading_info=True, **kw)


def _same(ref, got, new=()):
    a, b = ref.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if k not in new:
            assert torch.equal(a[k], b[k]), k
    bufs = dict(got.named_buffers())
    for name, buf in ref.named_buffers():  # non-persistent buffers too (rotary inv_freq)
        assert buf.dtype == bufs[name].dtype and torch.equal(buf, bufs[name]), name


@pytest.mark.parametrize("arch,tie", [("llama", False), ("qwen2", True)])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_causal_lm_equals_from_pretrained(tmp_path, arch, tie, dtype):
    folder = _sharded(tmp_path / "m", arch, tie, eos_extra=7)
    lm = load_model(ModelConfig(source=str(folder)), task="causal-lm", dtype=dtype, device="cpu")
    assert lm.load_note.startswith("Weights: loaded shard by shard onto cpu"), lm.load_note
    assert lm.new_params == []
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    ref, info = _reference(AutoModelForCausalLM, folder, torch_dtype)
    assert not info["missing_keys"]
    _same(ref, lm.model)
    model = lm.model
    assert model.generation_config.eos_token_id == ref.generation_config.eos_token_id
    assert 7 in model.generation_config.eos_token_id  # read from generation_config.json, not config.json
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (emb.data_ptr() == head.data_ptr()) is tie
    assert model.config._attn_implementation == ref.config._attn_implementation
    assert model.training is ref.training is False
    assert model.name_or_path == ref.name_or_path == str(folder)
    assert all(p.requires_grad for p in model.parameters())


def test_cpu_load_without_device_keeps_from_pretrained(tmp_path):
    folder = _sharded(tmp_path / "m")
    lm = load_model(ModelConfig(source=str(folder)), task="causal-lm")
    assert "from_pretrained" in lm.load_note and "shard by shard" not in lm.load_note


def test_at_most_one_shard_open(tmp_path, monkeypatch):
    import safetensors

    folder = _sharded(tmp_path / "m")
    real, state = safetensors.safe_open, {"open": 0, "most": 0, "files": set()}

    class Counting:
        def __init__(self, path, *a, **kw):
            self.handle = real(path, *a, **kw)
            state["files"].add(str(path))

        def __enter__(self):
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
            return self.handle.__enter__()

        def __exit__(self, *exc):
            state["open"] -= 1
            return self.handle.__exit__(*exc)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    lm = load_model(ModelConfig(source=str(folder)), task="causal-lm", dtype="bf16", device="cpu")
    assert "shard by shard" in lm.load_note
    assert state["most"] == 1 and state["open"] == 0
    assert state["files"] == {str(f) for f in folder.glob("*.safetensors")}


def test_foreign_key_falls_back_with_reason(tmp_path):
    folder = _sharded(tmp_path / "m")
    index = json.loads((folder / shards.INDEX).read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    tensors = load_file(folder / last)
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    save_file(tensors, folder / last, metadata={"format": "pt"})
    index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] = last
    (folder / shards.INDEX).write_text(json.dumps(index))
    lm = load_model(ModelConfig(source=str(folder)), task="causal-lm", dtype="bf16", device="cpu")
    assert "from_pretrained" in lm.load_note and "model.layers.0.mlp.extra_proj.weight" in lm.load_note
    _same(_reference(AutoModelForCausalLM, folder, torch.bfloat16)[0], lm.model)


def test_backbone_shape_mismatch_falls_back(tmp_path):
    folder = _sharded(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 96  # the shards hold 128-wide MLPs
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(shards.Fallback, match="shape"):
        shards.load_by_shards(AutoModelForCausalLM, folder, dtype=torch.float32, device="cpu")


def test_converted_checkpoint_falls_back(tmp_path):
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=2)
    MixtralForCausalLM(cfg).save_pretrained(tmp_path)  # per-expert keys; transformers 5 fuses them on load
    with pytest.raises(shards.Fallback, match="transformers converts"):
        shards.load_by_shards(AutoModelForCausalLM, tmp_path, dtype=torch.float32, device="cpu")


def test_keep_in_fp32_modules_like_from_pretrained(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    folder = _sharded(tmp_path / "m")
    monkeypatch.setattr(LlamaForCausalLM, "_keep_in_fp32_modules_strict", ["lm_head"])
    model, new, _ = shards.load_by_shards(AutoModelForCausalLM, folder, dtype=torch.bfloat16, device="cpu")
    ref, _ = _reference(AutoModelForCausalLM, folder, torch.bfloat16)
    assert model.lm_head.weight.dtype == ref.lm_head.weight.dtype == torch.float32
    _same(ref, model)


def _sharded_bert(path):
    folder = save_tiny_bert(path)
    AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).save_pretrained(
        folder, max_shard_size=SHARD)  # a classifier checkpoint: "bert." prefix, a 2-label head
    (folder / "model.safetensors").unlink(missing_ok=True)
    return folder


def test_classifier_from_base_checkpoint(tmp_path):
    folder = save_tiny_bert(tmp_path / "b")  # BertModel keys, no "bert." prefix, no head
    lm = load_model(ModelConfig(source=str(folder)), task="classification", num_labels=3, dtype="fp32",
                    device="cpu")
    assert "shard by shard" in lm.load_note
    assert lm.new_params == ["classifier.bias", "classifier.weight"]
    ref, info = _reference(AutoModelForSequenceClassification, folder, torch.float32, num_labels=3)
    assert set(info["missing_keys"]) == set(lm.new_params)
    _same(ref, lm.model, new=lm.new_params)
    assert lm.model.config.num_labels == 3


def test_classifier_head_of_other_label_count_is_new(tmp_path):
    folder = _sharded_bert(tmp_path / "b")
    assert len(list(folder.glob("*.safetensors"))) >= 3
    labels = {i: f"l{i}" for i in range(5)}
    lm = load_model(ModelConfig(source=str(folder)), task="classification", id2label=labels, dtype="bf16",
                    device="cpu")
    assert "shard by shard" in lm.load_note
    assert lm.new_params == ["classifier.bias", "classifier.weight"]
    assert lm.model.classifier.weight.shape[0] == 5 and lm.model.config.id2label[4] == "l4"
    ref, info = _reference(AutoModelForSequenceClassification, folder, torch.bfloat16, num_labels=5,
                           ignore_mismatched_sizes=True)
    assert {m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]} == set(lm.new_params)
    _same(ref, lm.model, new=lm.new_params)


def test_causal_checkpoint_into_classifier_reports_unused_head(tmp_path):
    folder = _sharded(tmp_path / "m")
    lm = load_model(ModelConfig(source=str(folder)), task="classification", num_labels=2, dtype="bf16",
                    device="cpu")
    assert "shard by shard" in lm.load_note and "lm_head.weight" in lm.load_note
    assert lm.new_params == ["score.weight"]
    ref, _ = _reference(AutoModelForSequenceClassification, folder, torch.bfloat16, num_labels=2)
    _same(ref, lm.model, new=lm.new_params)


def test_not_applicable_reasons(tmp_path):
    from ftstudio.engine.models import describe_model

    folder = _sharded(tmp_path / "m")
    info = describe_model(str(folder))
    assert shards.not_applicable(info, False, "cuda:0") is None
    assert "device" in shards.not_applicable(info, False, None)
    assert "trust_remote_code" in shards.not_applicable(info, True, "cuda:0")
    assert "meta" in shards.not_applicable(info, False, "meta")
    for f in folder.glob("*.safetensors*"):
        f.unlink()
    assert "model.safetensors" in shards.not_applicable(info, False, "cuda:0")
