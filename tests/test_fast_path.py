"""Issue 18: loading straight onto the training device in the training dtype, and the fast-path defaults."""
from __future__ import annotations

import pytest
import torch

from ftstudio.core.config import ModelConfig
from ftstudio.engine.models import load_model
from ftstudio.engine.models.load import load_target


def test_load_onto_a_device_in_the_training_dtype(tiny_llama):
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm", device="cpu", dtype=torch.bfloat16)
    params = list(lm.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert {p.device.type for p in params} == {"cpu"}
    assert all(p.requires_grad for p in params)
    lm.model.to(device="cpu", dtype=torch.bfloat16)  # the trainer's _place_model is then a no-op, not an error


def test_from_pretrained_gets_the_device_map(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kw):
        seen.update(kw)
        return real(cls, *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm", device="meta", dtype=torch.bfloat16)
    assert seen["device_map"] == {"": "meta"} and seen["dtype"] == torch.bfloat16
    seen.clear()
    load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm")  # the CPU path: as before, no device_map
    assert "device_map" not in seen and seen["dtype"] == torch.float32


def test_new_head_is_initialised_on_the_device_and_seeded(tiny_bert):
    def head(seed):
        torch.manual_seed(seed)
        lm = load_model(ModelConfig(source=str(tiny_bert)), task="classification", num_labels=3, device="cpu",
                        dtype=torch.bfloat16)
        assert lm.new_params, "the classifier head is new"
        w = dict(lm.model.named_parameters())[lm.new_params[-1]]
        assert w.dtype == torch.bfloat16 and w.device.type == "cpu"
        return w.detach().clone()

    a, b, c = head(0), head(0), head(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.float().abs().sum() > 0


def test_load_target_only_for_one_cuda_device():
    assert load_target("cpu", torch.float32) == {}
    assert load_target("cuda:0", torch.bfloat16) == {"device": "cuda:0", "dtype": torch.bfloat16}
    assert load_target("cuda:0", torch.float32, gpus=2) == {}  # FSDP ranks shard a host copy (its own path)
