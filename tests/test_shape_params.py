"""The closed-form shape (the plan's first answer, the params a config-only model is described with, and the
fallback when the trace cannot run) counts what transformers builds. Mixture-of-experts blocks were counted as one
dense MLP: Mixtral-8x7B was "7.24 B params" (it has 46.7 B) and Qwen3-30B-A3B 3.3 B (30.5 B), so the closed form
planned a sixth of the memory; GPT-NeoX (Pythia) was counted with a gated MLP, 26 % too many; multi-query and
grouped-query GPT-style models (Falcon-7B, SantaCoder, StarCoder2) with a key and a value per query head, 17 % too
many."""
from __future__ import annotations

import pytest

from ftstudio.engine.models.tensors import shape_from_config

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=1000, head_dim=16)
ARCHS = {
    "llama": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                      num_experts_per_tok=2),
    "qwen3_moe": dict(num_experts=4, moe_intermediate_size=16, num_experts_per_tok=2, decoder_sparse_step=2,
                      mlp_only_layers=[0]),
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "gpt_neox": {},
    "starcoder2": {},                                  # grouped-query keys and values (2 of 4 heads)
    "gpt_bigcode": dict(multi_query=True, n_embd=64, n_layer=3, n_head=4, n_inner=128),   # one key/value head
    "falcon": dict(multi_query=True, new_decoder_architecture=False, num_kv_heads=None),
}


@pytest.mark.parametrize("model_type", list(ARCHS))
def test_the_closed_form_counts_what_transformers_builds(model_type):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    small = {k: v for k, v in SMALL.items() if not (model_type == "falcon" and k == "head_dim")}   # no setter
    cfg = AutoConfig.for_model(model_type, **small, **ARCHS[model_type])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert shape_from_config(cfg.to_dict()).params == pytest.approx(real, rel=0.002)


MIXTRAL_8X7B = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
                "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
                "max_position_embeddings": 32768, "tie_word_embeddings": False}
QWEN3_30B_A3B = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
                 "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                 "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_attention_heads": 32,
                 "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": False,
                 "decoder_sparse_step": 1, "mlp_only_layers": []}


@pytest.mark.parametrize("cfg, billions, active", [(MIXTRAL_8X7B, 46.70, 2 * 14336), (QWEN3_30B_A3B, 30.53, 8 * 768)])
def test_published_moe_sizes(cfg, billions, active):
    shape = shape_from_config(cfg)
    assert shape.params / 1e9 == pytest.approx(billions, abs=0.01)
    assert shape.intermediate == active   # what one token's MLP computes: its top-k experts
    assert shape.layer_params() == pytest.approx(shape.params / cfg["num_hidden_layers"], rel=0.1)


def test_one_block_of_per_expert_names_is_one_block():
    """Weights read from a checkpoint's headers name each expert (experts.0, experts.1...): the first block's
    parameters are its own tensors, not expert 0 of every block."""
    from ftstudio.engine.models.tensors import ModelShape

    t = {f"model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight": (8, 4) for l in range(3) for e in range(2)}
    shape = ModelShape("mixtral", 4, 3, 1, 1, 4, 8, 10, t)
    assert shape.layer_params() == 2 * 32


def test_estimate_says_a_small_models_size_in_millions(cli, tiny_llama):
    code, out, err = cli("estimate", tiny_llama, "--no-trace", "--seq-len", "32")
    assert code == 0, err
    head = out.splitlines()[0]
    assert " M params" in head and "0.00 B" not in head, head
