"""Optimizer param groups: decay exemptions, layer groups of several architectures, ULMFiT rates."""

import pytest
import torch

from ftstudio.core.config import OptimConfig, ScheduleConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.models.structure import find_block_list, layer_depths, layer_groups
from ftstudio.engine.train.optim import build_optimizer, layer_lr_scales, no_decay_names, param_groups


def _load(path, cls_name="AutoModelForCausalLM"):
    import transformers
    return getattr(transformers, cls_name).from_pretrained(path)


def _lm_batch(vocab, rows=4, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, vocab, (rows, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_layer_groups_llama_bottom_to_top_and_complete(tiny_llama):
    model = _load(tiny_llama)
    groups = layer_groups(model)
    assert [g for g, _ in groups] == ["embeddings", "layer.0", "layer.1", "head"]
    names = dict(groups)
    assert names["embeddings"] == ["model.embed_tokens.weight"]
    assert set(names["head"]) == {"model.norm.weight", "lm_head.weight"}
    assert all(n.startswith("model.layers.1.") for n in names["layer.1"])
    flat = [n for _, ns in groups for n in ns]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())  # each weight exactly once
    assert find_block_list(model) is model.model.layers


def test_layer_groups_gpt2_bert_and_t5():
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, T5Config,
                              T5ForConditionalGeneration)
    gpt2 = dict(layer_groups(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2))))
    assert list(gpt2) == ["embeddings", "layer.0", "layer.1", "layer.2", "head"]
    assert set(gpt2["embeddings"]) == {"transformer.wte.weight", "transformer.wpe.weight"}
    assert set(gpt2["head"]) == {"transformer.ln_f.weight", "transformer.ln_f.bias"}  # lm_head is tied to wte

    bert = dict(layer_groups(BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))))
    assert list(bert) == ["embeddings", "layer.0", "layer.1", "head"]
    assert "bert.embeddings.LayerNorm.weight" in bert["embeddings"]
    assert {"classifier.weight", "bert.pooler.dense.weight"} <= set(bert["head"])

    # Encoder-decoder: both stacks, encoder below decoder; the encoder's final norm stays with its last block.
    t5 = dict(layer_groups(T5ForConditionalGeneration(T5Config(
        vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=2, num_decoder_layers=2))))
    assert list(t5) == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "head"]
    assert "encoder.final_layer_norm.weight" in t5["layer.1"]
    assert all(n.startswith("decoder.block.1.") for n in t5["layer.3"])
    assert "decoder.final_layer_norm.weight" in t5["head"]


def test_model_without_blocks_is_one_group():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    assert layer_groups(model) == [("model", ["0.weight", "0.bias", "1.weight", "1.bias"])]
    assert layer_lr_scales(model, 2.6) == {"model": 1.0}
    assert find_block_list(model) is None


def test_param_group_lrs_follow_ulmfit(tiny_llama):
    model = _load(tiny_llama)
    cfg = OptimConfig(lr=1e-3, layer_lr_decay=2.6)
    depth = {"head": 0, "layer.1": 1, "layer.0": 2, "embeddings": 3}
    assert layer_depths(model) == depth
    opt = build_optimizer(model, cfg, device_type="cpu")
    seen = set()
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * 2.6 ** -depth[group["layer"]], rel=1e-12)
        assert group["name"].startswith(group["layer"])
        seen.add(group["layer"])
    assert seen == set(depth)
    scales = layer_lr_scales(model, 2.6)
    assert list(scales) == ["embeddings", "layer.0", "layer.1", "head"]  # bottom → top for the GUI's bars
    assert scales["embeddings"] == pytest.approx(2.6 ** -3)
    # ξ = 1: one rate everywhere, two groups (decay / no decay).
    flat = build_optimizer(model, OptimConfig(lr=1e-3), device_type="cpu")
    assert len(flat.param_groups) == 2 and {g["lr"] for g in flat.param_groups} == {1e-3}
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        layer_lr_scales(model, 0.5)


def test_schedule_multiplies_each_groups_own_peak(tiny_llama):
    from ftstudio.engine.train.schedule import build_scheduler, lr_multiplier
    model = _load(tiny_llama)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, layer_lr_decay=2.0), device_type="cpu")
    sched_cfg = ScheduleConfig(schedule="cosine", warmup_steps=2)
    sched = build_scheduler(opt, 10, sched_cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    m = lr_multiplier(5, 10, sched_cfg)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"] * m)


def test_weight_decay_exempts_biases_norms_and_embeddings():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
    exempt = no_decay_names(model)
    for name, p in model.named_parameters():
        should = name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.w")
        assert (name in exempt) == should, name
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    by_name = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert all(by_name[n] == 0.0 for n in exempt)
    assert all(wd == 0.1 for n, wd in by_name.items() if n not in exempt)


def test_decoupled_decay_shrinks_only_decayed_weights(tiny_llama):
    # With a zero gradient, AdamW's only move is decoupled decay: θ ← θ·(1 − lr·wd). Exempt weights stay.
    model = _load(tiny_llama)
    lr, wd = 0.1, 0.5
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=wd), device_type="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    exempt = no_decay_names(model)
    assert "model.norm.weight" in exempt and "model.embed_tokens.weight" in exempt
    for n, p in model.named_parameters():
        expected = before[n] if n in exempt else before[n] * (1 - lr * wd)
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("kind", ["adafactor", "sgd", "adamw"])
def test_each_optimizer_kind_lowers_the_loss(tiny_llama, kind):
    model = _load(tiny_llama)
    batch = _lm_batch(model.config.vocab_size)
    opt = build_optimizer(model, OptimConfig(optimizer=kind, lr=1e-2, layer_lr_decay=1.5), device_type="cpu")
    assert all("name" in g for g in opt.param_groups)
    first = model(**batch).loss.item()
    for _ in range(10):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    assert model(**batch).loss.item() < first - 0.05


def test_adamw_is_fused_on_cpu_and_8bit_runs_there_too(tiny_llama):
    model = _load(tiny_llama)
    opt = build_optimizer(model, OptimConfig(), device_type="cpu")
    assert opt.defaults["fused"] is True          # one kernel: 13-15 ms a step on the demo against 64-90 foreach
    # ... and the same update as the foreach AdamW it replaced
    twin = _load(tiny_llama)
    ref = torch.optim.AdamW(twin.parameters(), lr=opt.defaults["lr"], weight_decay=0.0, foreach=True)
    for g in opt.param_groups:
        g["weight_decay"] = 0.0
    for _ in range(3):
        for m in (model, twin):
            for p in m.parameters():
                p.grad = torch.full_like(p, 0.01) * (1 + p.detach().sin())
        opt.step(), ref.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # 8-bit states: FT Studio's own FP8-state AdamW, whose torch path runs on the CPU (torchao's and bitsandbytes'
    # need CUDA)
    eight = build_optimizer(model, OptimConfig(optimizer="adamw8bit"), device_type="cpu")
    assert type(eight).__name__ == "Fp8StateAdamW"


def test_discriminative_rates_make_lower_layers_move_less(tiny_llama):
    """ξ = 2.6: relative drift per layer grows bottom → top; with ξ = 1 the layers move alike."""
    from ftstudio.engine.forgetting import Regularizer

    def drift_after(xi):
        torch.manual_seed(0)
        model = _load(tiny_llama)
        reg = Regularizer(model)  # θ0 for the drift monitor only
        opt = build_optimizer(model, OptimConfig(lr=3e-3, layer_lr_decay=xi, weight_decay=0.0), device_type="cpu")
        for step in range(10):
            opt.zero_grad()
            model(**_lm_batch(model.config.vocab_size, seed=step)).loss.backward()
            opt.step()
        return reg.drift(model)

    flat, ulmfit = drift_after(1.0), drift_after(2.6)
    print({g: (round(flat[g], 5), round(ulmfit[g], 5)) for g in flat})
    # Groups of different make-up (embeddings vs blocks) drift differently even at one LR, so compare each
    # group with itself: the ξ run's drift over the flat run's falls with depth like ξ^-l (Adam's step ≈ lr).
    ratio = {g: ulmfit[g] / flat[g] for g in flat}
    assert ratio["embeddings"] < ratio["layer.0"] < ratio["layer.1"] < ratio["head"]
    assert ratio["head"] == pytest.approx(1.0, rel=0.25)
    for g, depth in (("layer.1", 1), ("layer.0", 2), ("embeddings", 3)):
        assert ratio[g] == pytest.approx(2.6 ** -depth, rel=0.4), g
    # Two blocks of the same shape can be compared directly: the lower one moves less.
    assert ulmfit["layer.0"] < 0.6 * ulmfit["layer.1"]
    assert 0.6 < flat["layer.0"] / flat["layer.1"] < 1.6
