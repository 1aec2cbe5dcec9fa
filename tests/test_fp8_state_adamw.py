"""FT Studio's FP8-state AdamW (train/fp8_state_adamw.py) on the CPU: its torch path, which the Triton kernel
matches on the GPU (tests/benchmarks/fp8_adamw_gpu.py)."""
from __future__ import annotations

import copy

import pytest
import torch

import ftstudio.engine.train.fp8_state_adamw as F
from ftstudio.engine.train.optim import CompensatedAdamW


def test_blockwise_fp8_keeps_each_value_within_e4m3s_spacing_of_its_block():
    torch.manual_seed(0)
    n = 3 * F.QBLOCK + 37                                   # a partial last block
    x = torch.randn(n) * torch.logspace(-3, 2, n)           # values spanning five decades
    x[F.QBLOCK:2 * F.QBLOCK] = 0                            # an all-zero block
    q = torch.empty(n, dtype=torch.float8_e4m3fn)
    s = torch.empty(-(-n // F.QBLOCK))
    F.quantize(x, q, s, None)
    back = F.dequantize(q, s)
    assert torch.all(back[F.QBLOCK:2 * F.QBLOCK] == 0) and s[1] == 0
    for b in range(s.numel()):
        part, got = x[b * F.QBLOCK:(b + 1) * F.QBLOCK], back[b * F.QBLOCK:(b + 1) * F.QBLOCK]
        big = part.abs() > part.abs().max() / 64                 # e4m3's normal range below the block's max
        assert torch.all((got[big] - part[big]).abs() <= part[big].abs() / 16 + 1e-12)   # 3 mantissa bits
        assert torch.all((got - part).abs() <= part.abs().max() * 2.0 ** -9 / 448 * 256 + part.abs() / 16)


def test_stochastic_rounding_to_fp8_is_unbiased_where_nearest_is_not():
    x = torch.full((F.QBLOCK,), 448.0)
    x[1:] = 1.03125                     # between e4m3's 1.0 and 1.125: nearest gives 1.0 every time
    q = torch.empty(F.QBLOCK, dtype=torch.float8_e4m3fn)
    s = torch.empty(1)
    F.quantize(x, q, s, None)
    assert F.dequantize(q, s)[1:].unique().tolist() == [1.0]
    draws = []
    for seed in range(200):
        F.quantize(x, q, s, F._noise(F.QBLOCK, seed, 1, 20, torch.device("cpu")))
        draws.append(F.dequantize(q, s)[1:])
    mean = torch.stack(draws).mean()
    assert abs(float(mean) - 1.03125) < 0.002


def _least_squares(opt_cls, dtype, steps=300, **kw):
    torch.manual_seed(0)
    d = 48
    x, w_true = torch.randn(384, d), torch.randn(d, d) * 0.1
    y = x @ w_true.T
    torch.manual_seed(1)
    w = torch.nn.Parameter((torch.randn(d, d) * 0.01).to(dtype))
    opt = opt_cls([w], lr=3e-3, weight_decay=0.0, **kw)
    for _ in range(steps):
        loss = ((x.to(dtype) @ w.T - y.to(dtype)).float() ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def test_it_trains_like_full_precision_adamw():
    fp32 = _least_squares(torch.optim.AdamW, torch.float32)
    ours = _least_squares(F.Fp8StateAdamW, torch.float32)
    assert ours < 2 * fp32 + 1e-7                       # FP8 moments: the same optimum, about as fast
    bf16_ref = _least_squares(CompensatedAdamW, torch.bfloat16, rounding="stochastic")
    bf16 = _least_squares(F.Fp8StateAdamW, torch.bfloat16)
    assert bf16 < 1.5 * bf16_ref                        # bf16 weights: as close as the bf16-state optimizer gets
    nearest = _least_squares(F.Fp8StateAdamW, torch.bfloat16, stochastic=False)
    assert nearest > 10 * bf16                          # what stochastic rounding is for


def test_tiny_updates_survive_on_bf16_weights():
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = F.Fp8StateAdamW([w], lr=1e-4, weight_decay=0.0)
    for _ in range(40):
        w.grad = torch.ones_like(w)
        opt.step()
    assert abs(float(w.float().mean()) - (1 - 40e-4)) < 4e-4    # 1e-4 is 1/78 of bf16's spacing at 1.0


def test_chunks_of_a_large_tensor_update_as_one(monkeypatch):
    torch.manual_seed(0)
    n = 5 * F.QBLOCK + 11
    runs = []
    for chunk in (1 << 22, 2 * F.QBLOCK):
        monkeypatch.setattr(F, "CHUNK", chunk)
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(n))
        opt = F.Fp8StateAdamW([p], lr=1e-2, stochastic=False)
        for _ in range(4):
            p.grad = torch.randn(n)
            opt.step()
        runs.append(p.detach().clone())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_a_resumed_optimizer_continues_as_an_unbroken_one():
    torch.manual_seed(0)
    grads = [torch.randn(700) for _ in range(6)]

    def make():
        torch.manual_seed(5)
        p = torch.nn.Parameter(torch.randn(700).to(torch.bfloat16))
        return p, F.Fp8StateAdamW([p], lr=1e-3)

    p, opt = make()
    for g in grads:
        p.grad = g.to(torch.bfloat16)
        opt.step()
    q, first = make()
    for g in grads[:3]:
        q.grad = g.to(torch.bfloat16)
        first.step()
    saved = copy.deepcopy((q.detach().clone(), first.state_dict()))
    r = torch.nn.Parameter(saved[0])
    second = F.Fp8StateAdamW([r], lr=1e-3)
    second.load_state_dict(saved[1])
    assert second.state[r]["exp_avg"].dtype == torch.float8_e4m3fn
    for g in grads[3:]:
        r.grad = g.to(torch.bfloat16)
        second.step()
    torch.testing.assert_close(r.detach(), p.detach(), rtol=0, atol=0)


def test_gradient_clipping_factor_is_applied_in_the_step():
    p = torch.nn.Parameter(torch.zeros(512))
    q = torch.nn.Parameter(torch.zeros(512))
    a, b = F.Fp8StateAdamW([p], lr=0.1, stochastic=False), F.Fp8StateAdamW([q], lr=0.1, stochastic=False)
    p.grad = torch.linspace(-10, 10, 512)
    q.grad = p.grad.clone()
    norm = a.clip_in_step([p], 1.0)
    torch.nn.utils.clip_grad_norm_([q], 1.0)
    a.step()
    b.step()
    assert float(norm) == pytest.approx(float(torch.linalg.vector_norm(p.grad)))
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_state_bytes_are_what_it_allocates():
    p = torch.nn.Parameter(torch.randn(1000, 3))
    opt = F.Fp8StateAdamW([p])
    p.grad = torch.randn_like(p)
    opt.step()
    built = sum(v.numel() * v.element_size() for v in opt.state[p].values())
    assert built == F.state_bytes(p.numel())
