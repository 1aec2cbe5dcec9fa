"""The CPU-visible logic of two CUDA speed paths: cuDNN-first attention (engine/train/cudnn_attention.py) and the
one-launch bf16 AdamW kernel's dispatch and noise seeds (engine/train/adamw_kernel.py, optim.CompensatedAdamW).
The kernels themselves run on a GPU: tests/benchmarks/adamw_kernel_gpu.py checks their numerics there."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from ftstudio.engine.data.collate import block_causal_mask

from ftstudio.engine.train import adamw_kernel, cudnn_attention, optim


class _Module(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def _qkv(heads=4, kv=2, seq=8, dim=16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, heads, seq, dim, generator=g), torch.randn(2, kv, seq, dim, generator=g),
            torch.randn(2, kv, seq, dim, generator=g))


def test_the_cudnn_branch_passes_grouped_heads_as_they_are_and_equals_transformers_sdpa(monkeypatch):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv()
    ref, _ = sdpa_attention_forward(_Module(), q, k, v, None, scaling=0.25)
    monkeypatch.setattr(cudnn_attention, "_on_gpu", lambda t: True)     # take the GPU branch on the CPU
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append((a[1].shape, kw)) or real(*a, **kw))
    out, _ = cudnn_attention._forward(_Module(), q, k, v, None, scaling=0.25)
    assert calls and calls[0][0][1] == 2 and calls[0][1]["is_causal"] is True and calls[0][1]["enable_gqa"]
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("case", ["mask", "not causal", "one query", "cpu"])
def test_every_other_call_goes_to_transformers_sdpa_unchanged(monkeypatch, case):
    import transformers.integrations.sdpa_attention as hf_sdpa

    q, k, v = _qkv()
    mask = torch.ones(2, 1, 8, 8, dtype=torch.bool).tril() if case == "mask" else None
    if case == "one query":
        q = q[:, :, -1:]
    monkeypatch.setattr(cudnn_attention, "_on_gpu", lambda t: case != "cpu")
    seen = []
    real = hf_sdpa.sdpa_attention_forward
    monkeypatch.setattr(hf_sdpa, "sdpa_attention_forward", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    cudnn_attention._forward(_Module(), q, k, v, mask, is_causal=case != "not causal")
    assert seen == [1]


def test_a_llama_runs_with_the_registered_attention_and_its_export_does_not_name_it(tmp_path):
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    m = LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 64, (2, 8))
    ref = m(input_ids=x).logits
    m.set_attn_implementation(cudnn_attention.register())
    torch.testing.assert_close(m(input_ids=x).logits, ref)
    m.save_pretrained(tmp_path)
    assert cudnn_attention.NAME not in (tmp_path / "config.json").read_text()


def test_choose_attention_picks_cudnn_only_on_cuda_for_sdpa_models(monkeypatch):
    from ftstudio.engine.train import attention as rooms

    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2))
    assert rooms._cudnn_first(m, "cpu") is None
    assert rooms._cudnn_first(m, "cuda:0") == cudnn_attention.NAME
    monkeypatch.setattr("sys.frozen", True, raising=False)       # the bundle: no fused-kernel experiments
    assert rooms._cudnn_first(m, "cuda:0") is None
    monkeypatch.undo()
    monkeypatch.setattr(cudnn_attention, "MODE", "off")
    assert rooms._cudnn_first(m, "cuda:0") is None
    monkeypatch.undo()
    m.set_attn_implementation("eager")
    assert rooms._cudnn_first(m, "cuda:0") is None


def test_the_kernel_is_not_offered_on_the_cpu_and_the_compensated_paths_still_run():
    p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
    p.grad = torch.full_like(p, 1e-3)
    opt = optim.CompensatedAdamW([p], lr=1e-2, rounding="stochastic")
    assert not adamw_kernel.fits([p], [p.grad], [p], [p])       # CPU tensors: never the Triton kernel
    opt.step()
    assert opt.param_groups[0]["sr_step"] == 1 and p.float().mean() < 1


def test_noise_seeds_follow_the_step_count_so_a_resumed_run_draws_the_same():
    torch.manual_seed(123)
    a = [optim._noise_seed(s, 0) for s in range(1, 5)]
    assert len(set(a)) == 4                                     # a new draw every step
    assert optim._noise_seed(2, 1) != optim._noise_seed(2, 0)   # and every group
    torch.manual_seed(123)
    assert [optim._noise_seed(s, 0) for s in range(1, 5)] == a  # the same run seed: the same draws
    p = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    p.grad = torch.zeros_like(p)
    opt = optim.CompensatedAdamW([p], rounding="stochastic")
    opt.step(); opt.step()
    fresh = optim.CompensatedAdamW([p], rounding="stochastic")
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["sr_step"] == 2                # the count travels with the checkpoint


def test_the_block_layout_covers_every_value_once():
    tensor_of, start_of, sizes = adamw_kernel._layout((5000, 1, 2048), torch.device("cpu"), 2048)
    assert tensor_of.tolist() == [0, 0, 0, 1, 2]
    assert start_of.tolist() == [0, 2048, 4096, 0, 0]
    assert sizes.tolist() == [5000, 1, 2048]


def _tiny(cls=LlamaForCausalLM, config=LlamaConfig, **kw):
    torch.manual_seed(0)
    m = cls(config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, **kw)).eval()
    m.config.use_cache = False
    return m


@pytest.mark.parametrize("case", ["left padding", "sliding window"])
def test_the_registered_attention_gets_the_masks_sdpa_gets(monkeypatch, case):
    """A registered attention without a mask function of its own gets no mask from transformers: padding and
    sliding windows would be dropped. It is registered with SDPA's masks, so every such call equals SDPA."""
    monkeypatch.setattr(cudnn_attention, "_on_gpu", lambda t: True)
    m = (_tiny(MistralForCausalLM, MistralConfig, sliding_window=3) if case == "sliding window" else _tiny())
    x = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0                                  # left padding, as batched generation pads
    kw = {"attention_mask": mask} if case == "left padding" else {}
    with torch.no_grad():
        ref = m(input_ids=x, **kw).logits
        m.set_attn_implementation(cudnn_attention.register())
        out = m(input_ids=x, **kw).logits
    keep = mask.bool() if case == "left padding" else torch.ones_like(mask, dtype=torch.bool)
    torch.testing.assert_close(out[keep], ref[keep])


def test_packed_rows_take_cudnn_when_each_holds_one_document_and_flex_masks_otherwise(monkeypatch):
    monkeypatch.setattr(cudnn_attention, "_on_gpu", lambda t: True)
    m = _tiny()
    x = torch.randint(0, 64, (2, 8))
    several = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1]])    # 2 documents in each row
    one = torch.arange(8).expand(2, 8)
    seen = []
    real = cudnn_attention._forward
    monkeypatch.setattr(cudnn_attention, "_forward", lambda *a, **kw: seen.append(a[4]) or real(*a, **kw))
    with torch.no_grad():     # flex_attention has no CPU backward; the forward is what decides here
        ref_several = m(input_ids=x, attention_mask=block_causal_mask(several), position_ids=several).logits
        ref_one = m(input_ids=x).logits
        m.set_attn_implementation(cudnn_attention.register(cudnn_attention.PACKED))
        out_one = m(input_ids=x, position_ids=one).logits
        assert seen == [None, None]                   # both layers: no mask, the cuDNN call
        seen.clear()
        out_several = m(input_ids=x, position_ids=several).logits
    assert seen == []                                 # block masks went to flex attention
    torch.testing.assert_close(out_one, ref_one)
    torch.testing.assert_close(out_several, ref_several)


@pytest.mark.parametrize("gpus,attention,packed,expect", [
    ([0], "auto", False, cudnn_attention.NAME), ([0, 1], "auto", False, "sdpa"), ([0], "sdpa", False, "sdpa"),
    ([0], "auto", True, cudnn_attention.PACKED), ([0], "flex_attention", True, "flex_attention")])
def test_auto_attention_on_one_gpu_is_cudnn_first_and_says_so(monkeypatch, gpus, attention, packed, expect):
    from types import SimpleNamespace
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train import attention as rooms

    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2))
    cfg = RunConfig()
    cfg.hardware.gpus, cfg.model.attention = gpus, attention
    said = []
    monkeypatch.setattr(rooms, "_flex_available", lambda: True)
    prepared = SimpleNamespace(collate=SimpleNamespace(packed=packed, positions_only=False),
                               train=[{"input_ids": [1] * cfg.data.seq_len}] * 10)
    rooms.choose_attention(m, prepared, "cuda:0", cfg, said.append)
    assert m.config._attn_implementation == expect
    assert any("cuDNN" in e.message for e in said) == (expect in (cudnn_attention.NAME, cudnn_attention.PACKED))
    assert prepared.collate.positions_only == (expect in ("flex_attention", cudnn_attention.PACKED))


def _params_with_grads(seed=0, big=50.0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(n, generator=g).to(torch.bfloat16)) for n in (64, 7, 300)]
    ps.append(torch.nn.Parameter(torch.randn(5, generator=g)))                     # an fp32 tensor too
    for p in ps:
        p.grad = (torch.randn(p.shape, generator=g) * big).to(p.dtype)
    return ps


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("max_norm", [1.0, float("inf")])
def test_clipping_inside_the_step_equals_clip_grad_norm_then_step(foreach, max_norm):
    ref, fused = _params_with_grads(), _params_with_grads()
    a = optim.CompensatedAdamW(ref, lr=1e-2, rounding="nearest", foreach=foreach)
    b = optim.CompensatedAdamW(fused, lr=1e-2, rounding="nearest", foreach=foreach)
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    a.step()
    n_fused = b.clip_in_step(fused, max_norm)
    b.step()
    assert n_fused.item() == n_ref.item()
    for p, q in zip(ref, fused):
        assert p.equal(q)


def test_the_kernel_gets_the_clipping_factor_and_a_skipped_steps_factor_is_dropped(monkeypatch):
    seen = []

    def kernel_step(self, items, lr, b1, b2, eps, wd, stochastic, seed, scale=None):
        seen.append(scale)
        return True                                      # as if the kernel had updated the bucket
    monkeypatch.setattr(optim.CompensatedAdamW, "_kernel_step", kernel_step)
    ps = _params_with_grads()
    grads = [p.grad.clone() for p in ps]
    opt = optim.CompensatedAdamW(ps, lr=1e-2, rounding="stochastic")
    norm = opt.clip_in_step(ps, 1.0)
    opt.step()
    assert all(s is not None and s.item() == pytest.approx(1.0 / (norm.item() + 1e-6), rel=1e-2) for s in seen)
    assert all(p.grad.equal(g) for p, g in zip(ps, grads))     # the gradients were not rewritten first
    seen.clear()
    opt.clip_in_step(ps, 1.0)
    opt.zero_grad()                                          # a skipped step: its factor must not carry over
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()
    assert seen and all(s is None for s in seen)


@pytest.mark.parametrize("full_rows,expect", [(10, cudnn_attention.NAME), (9, cudnn_attention.NAME), (8, "sdpa")])
def test_rows_of_varying_length_keep_sdpa_because_cudnn_plans_each_new_length(full_rows, expect):
    from types import SimpleNamespace
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train import attention as rooms

    m = _tiny()
    m.set_attn_implementation("sdpa")
    cfg = RunConfig()
    cfg.hardware.gpus = [0]
    L = cfg.data.seq_len
    rows = [{"input_ids": [1] * L}] * full_rows + [{"input_ids": [1] * (L // 3 + i)} for i in range(10 - full_rows)]
    said = []
    rooms.choose_attention(m, SimpleNamespace(collate=SimpleNamespace(packed=False), train=rows), "cuda:0", cfg,
                           said.append)
    assert m.config._attn_implementation == expect
    assert any("vary in length" in e.message for e in said) == (expect == "sdpa")
