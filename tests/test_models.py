"""Model sources: describe without torch, load for full fine-tuning, and clear errors for broken models."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from ftstudio.core.config import ModelConfig
from ftstudio.core.errors import ModelError
from ftstudio.engine.models import (LoadedModel, demo_model_path, describe_model, load_model,
                                    resolve_task)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- describe_model


def test_describe_does_not_import_torch(tiny_llama):
    code = textwrap.dedent(f"""
        import sys
        from ftstudio.engine.models import describe_model, list_cached_models, resolve_task
        a = describe_model("demo"); b = describe_model({str(tiny_llama)!r}); list_cached_models()
        resolve_task("auto", a, None)
        assert "torch" not in sys.modules, "describe_model imported torch"
        print(a.params, b.params)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "22713728"


@pytest.mark.parametrize("fixture,arch,encoder", [("tiny_llama", "LlamaForCausalLM", False),
                                                   ("tiny_gpt2", "GPT2LMHeadModel", False),
                                                   ("tiny_bert", "BertModel", True)])
def test_describe_counts_parameters_exactly(request, fixture, arch, encoder):
    from transformers import AutoModel
    path = request.getfixturevalue(fixture)
    info = describe_model(str(path))
    assert (info.kind, info.architecture, info.is_encoder, info.params_exact) == ("folder", arch, encoder, True)
    # safetensors stores each tensor once (tied weights too), so the header sum equals the loaded model's count
    assert info.params == _numel(AutoModel.from_pretrained(path) if encoder else
                                 __import__("transformers").AutoModelForCausalLM.from_pretrained(path))
    assert info.dtype == "float32" and info.context_length == 512 and info.num_layers == 2
    assert info.hidden_size == 32 and info.config["model_type"] == info.model_type


def test_describe_demo():
    info = describe_model("demo")
    assert info.kind == "demo" and info.path == str(demo_model_path())
    assert (info.model_type, info.is_encoder, info.params, info.hidden_size, info.num_layers, info.vocab_size,
            info.context_length) == ("bert", True, 22_713_728, 384, 6, 30522, 512)


def test_describe_estimates_without_weights(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    info = describe_model(str(tmp_path))
    true = _numel(AutoModelForCausalLM.from_pretrained(tiny_llama))
    assert not info.params_exact and abs(info.params - true) / true < 0.05


# ---------------------------------------------------------------- errors a user can act on


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"no config\.json") as e:
        describe_model(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_corrupt_config_names_file_and_line(tiny_llama, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(tiny_llama, bad)
    lines = (bad / "config.json").read_text().splitlines()
    lines[3] = lines[3].rstrip(",") + " oops,"
    (bad / "config.json").write_text("\n".join(lines))
    with pytest.raises(ModelError, match=r"config\.json, line 4, column \d+") as e:
        describe_model(str(bad))
    assert str(bad / "config.json") in str(e.value)


@pytest.mark.parametrize("source", ["/nope/missing-model", "missing.gguf", "a/b/c"])
def test_missing_sources(source):
    with pytest.raises(ModelError, match="no such file or folder"):
        describe_model(source)


def test_non_gguf_file_is_refused(tiny_llama):
    with pytest.raises(ModelError, match=r"\.gguf"):
        describe_model(str(tiny_llama / "config.json"))


def test_missing_tokenizer(tiny_llama, tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_llama / f, m / f)
    with pytest.raises(ModelError, match="no tokenizer files") as e:
        load_model(ModelConfig(source=str(m)), task="causal-lm")
    assert str(m) in str(e.value)


def test_unknown_architecture(tiny_llama, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny_llama, m)
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(model_type="frobnicator", architectures=["FrobnicatorForCausalLM"])
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="frobnicator") as e:
        load_model(ModelConfig(source=str(m)), task="causal-lm")
    assert str(m) in str(e.value) and "trust_remote_code" in str(e.value)


# ---------------------------------------------------------------- resolve_task


def test_resolve_task(tiny_llama, tiny_bert):
    llama, bert = describe_model(str(tiny_llama)), describe_model(str(tiny_bert))
    assert resolve_task("auto", llama, "chat") == "causal-lm"
    assert resolve_task("auto", llama, None) == "causal-lm"
    assert resolve_task("auto", llama, "classification") == "classification"
    assert resolve_task("auto", bert, "classification") == "classification"
    assert resolve_task("auto", bert, None) == "classification"
    assert resolve_task("classification", llama, None) == "classification"  # explicit request wins
    with pytest.raises(ModelError, match="encoder-only"):
        resolve_task("causal-lm", bert, None)
    with pytest.raises(ModelError, match="encoder-only"):
        resolve_task("auto", bert, "chat")
    with pytest.raises(ModelError, match="classification"):
        resolve_task("causal-lm", llama, "classification")
    with pytest.raises(ModelError, match="not known"):
        resolve_task("seq2seq", llama, None)


# ---------------------------------------------------------------- load_model


def _all_trainable_on_cpu(lm: LoadedModel):
    params = list(lm.model.parameters())
    assert params and all(p.requires_grad for p in params)
    assert {p.device.type for p in params} == {"cpu"}


def test_load_causal_lm(tiny_llama):
    import torch
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.task == "causal-lm" and lm.new_params == []
    _all_trainable_on_cpu(lm)
    assert lm.model.dtype == torch.float32
    assert lm.tokenizer.pad_token == "<pad>" and lm.tokenizer.padding_side == "right"
    assert lm.model.config.pad_token_id == lm.tokenizer.pad_token_id


def test_load_uses_eos_as_pad_and_dtype(tiny_gpt2, tmp_path):
    import torch
    from transformers import AutoTokenizer
    m = tmp_path / "m"
    shutil.copytree(tiny_gpt2, m)
    tok = AutoTokenizer.from_pretrained(m)
    tok.pad_token = None
    tok.save_pretrained(m)
    lm = load_model(ModelConfig(source=str(m)), task="causal-lm", dtype="bf16")
    assert lm.tokenizer.pad_token == "</s>" and lm.model.config.pad_token_id == lm.tokenizer.eos_token_id
    assert lm.model.dtype == torch.bfloat16
    _all_trainable_on_cpu(lm)


def test_load_classifier_carries_labels(tiny_bert, tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification
    labels = {0: "neg", 1: "neu", 2: "pos"}
    for src in (tiny_bert, tiny_llama):
        lm = load_model(ModelConfig(source=str(src)), task="classification", id2label=labels)
        assert lm.model.config.num_labels == 3 and lm.model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
        assert lm.model.config.pad_token_id == lm.tokenizer.pad_token_id is not None
        assert lm.new_params and all("classifier" in n or "score" in n for n in lm.new_params)
        _all_trainable_on_cpu(lm)
    out = tmp_path / "export"
    lm.model.save_pretrained(out)
    assert AutoModelForSequenceClassification.from_pretrained(out).config.id2label == labels


def test_classifier_head_of_other_size_is_replaced(tiny_bert, tmp_path):
    first = load_model(ModelConfig(source=str(tiny_bert)), task="classification", num_labels=2)
    first.model.save_pretrained(tmp_path / "m")
    first.tokenizer.save_pretrained(tmp_path / "m")
    again = load_model(ModelConfig(source=str(tmp_path / "m")), task="classification", num_labels=5)
    assert again.model.classifier.out_features == 5 and "classifier.weight" in again.new_params


def test_demo_keeps_pretrained_encoder():
    """Only the classification head is new: every encoder weight equals the bundled safetensors file."""
    import torch
    from safetensors.torch import load_file
    lm = load_model(ModelConfig(source="demo"), task="classification", id2label={0: "a", 1: "b"})
    assert lm.info.kind == "demo" and sorted(lm.new_params) == ["classifier.bias", "classifier.weight"]
    saved = load_file(demo_model_path() / "model.safetensors")
    encoder = lm.model.bert.state_dict()
    compared = [k for k in saved if k in encoder and k != "embeddings.position_ids"]
    assert len(compared) >= 100
    for k in compared:
        assert torch.equal(encoder[k], saved[k]), k
    _all_trainable_on_cpu(lm)


def test_frozen_weights_are_unfrozen_and_int_weights_refused(tiny_llama):
    import torch
    from ftstudio.engine.models.load import _make_trainable
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm")
    lm.model.model.embed_tokens.weight.requires_grad_(False)
    _make_trainable(lm.model, "here")
    assert lm.model.model.embed_tokens.weight.requires_grad
    lm.model.model.norm.weight = torch.nn.Parameter(torch.ones(32, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ModelError, match="cannot be trained"):
        _make_trainable(lm.model, "here")


def test_pickle_checkpoint_runs_no_code(tiny_llama, tmp_path):
    """A .bin checkpoint is opened with weights_only=True: a malicious pickle is refused, its code never runs."""
    import torch
    m = tmp_path / "m"
    shutil.copytree(tiny_llama, m)
    (m / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model.norm.weight": Evil()}, m / "pytorch_model.bin")
    with pytest.raises(ModelError, match="refused to open the pickle"):
        load_model(ModelConfig(source=str(m)), task="causal-lm")
    assert not marker.exists()


def test_our_code_never_unpickles_unsafely():
    import ftstudio.engine.models as engine
    from pathlib import Path
    for f in Path(engine.__file__).parent.glob("*.py"):
        src = f.read_text()
        assert "torch.load(" not in src and "pickle.load" not in src, f


def test_plain_pickle_checkpoint_still_loads(tiny_llama, tmp_path):
    import torch
    from safetensors.torch import load_file
    m = tmp_path / "m"
    shutil.copytree(tiny_llama, m)
    state = load_file(m / "model.safetensors")
    (m / "model.safetensors").unlink()
    torch.save(state, m / "pytorch_model.bin")
    assert not describe_model(str(m)).params_exact  # no safetensors header to count from: an estimate
    lm = load_model(ModelConfig(source=str(m)), task="causal-lm")
    assert all(torch.equal(lm.model.state_dict()[k], v) for k, v in state.items())


def test_remote_code_never_runs_unless_trusted(tiny_llama, tmp_path):
    m = tmp_path / "m"
    shutil.copytree(tiny_llama, m)
    marker = tmp_path / "code-ran"
    (m / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                               "from transformers import LlamaConfig\n"
                                               "class CustomConfig(LlamaConfig):\n    model_type = 'custom-llama'\n")
    (m / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(model_type="custom-llama", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                    "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (m / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="ships its own Python code.*trust_remote_code"):
        load_model(ModelConfig(source=str(m)), task="causal-lm")
    assert not marker.exists()


def test_a_config_json_missing_a_size_field_names_that_field():
    """Trial: a config.json with hidden_size deleted was said to lack all three size fields at once."""
    from ftstudio.engine.models.tensors import shape_from_config

    cfg = {"model_type": "llama", "num_hidden_layers": 2, "vocab_size": 100, "num_attention_heads": 4}
    with pytest.raises(ModelError) as e:
        shape_from_config(cfg)
    assert "lacks hidden_size " in str(e.value) and "vocab_size" not in str(e.value)
