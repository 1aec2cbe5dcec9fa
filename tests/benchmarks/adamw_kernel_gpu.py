"""The one-launch bf16 AdamW kernel (engine/train/adamw_kernel.py) against the compiled multi-tensor update and
torch's fused AdamW, on a model shape's real tensor list, in one call; plus its numerics against the reference
update, and SDPA's attention backends at the shape's attention size. One JSON line per result.

    PYTHONUNBUFFERED=1 python tests/benchmarks/adamw_kernel_gpu.py [--shapes llama3.2-1b llama3-8b] [--no-compiled]

step_ms: mean of 10 steps after one warm-up step; gbps: the 14 bytes per parameter the update must move
(read weight, gradient, two moments; write weight, two moments) over step_ms. Ratios are against the compiled
multi-tensor path of the same call (the path the kernel replaces).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent), str(HERE)]


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def tensors(shape: str, device: str):
    import torch
    from throughput import SHAPES

    s = SHAPES[shape]
    d, f, L = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    heads = s.get("num_attention_heads", d // 64)
    kv = s.get("num_key_value_heads", heads)
    hd = d // heads
    vocab = s.get("vocab_size", 128256)
    shapes = [(vocab, d)]
    for _ in range(L):
        shapes += [(d, d), (kv * hd, d), (kv * hd, d), (d, d), (f, d), (f, d), (d, f), (d,), (d,)]
    shapes += [(d,)] + ([] if s.get("tie_word_embeddings") else [(vocab, d)])
    g = torch.Generator(device=device).manual_seed(0)
    ps = [torch.nn.Parameter((torch.randn(sh, generator=g, device=device) * 0.02).bfloat16()) for sh in shapes]
    for p in ps:
        p.grad = (torch.randn(p.shape, generator=g, device=device) * 1e-3).bfloat16()
    return ps, (heads, kv, hd)


def time_steps(opt, n: int = 10) -> tuple[float, float]:
    import torch
    torch.cuda.synchronize(); t0 = time.perf_counter()
    opt.step(); torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        opt.step()
    torch.cuda.synchronize()
    return first, (time.perf_counter() - t0) / n * 1e3


def optimizers(shape: str, compiled: bool) -> None:
    import torch
    from ftstudio.engine.train.optim import CompensatedAdamW

    ps, _ = tensors(shape, "cuda")
    n = sum(p.numel() for p in ps)
    from ftstudio.engine.train import adamw_kernel

    rows = {}
    cases = [(f"kernel {mode} block {block}", dict(kernel=True), mode, block)
             for mode in ("multi", "per-tensor") for block in (1024, 2048, 4096)]
    cases += [("compiled multi-tensor", dict(kernel=False), "", 0)] if compiled else []
    for name, kw, mode, block in cases:
        if mode:
            adamw_kernel.MODE, adamw_kernel.BLOCK = mode, block
        opt = CompensatedAdamW(ps, lr=1e-5, rounding="stochastic", **kw)
        first, ms = time_steps(opt)
        rows[name] = ms
        emit({"shape": shape, "params": n, "optimizer": name, "step_ms": round(ms, 2), "first_step_s": round(first, 1),
              "gbps": round(14 * n / ms / 1e6)})
        del opt
    opt = torch.optim.AdamW(ps, lr=1e-5, fused=True)        # bf16 states, round-to-nearest: the bandwidth anchor
    first, ms = time_steps(opt)
    emit({"shape": shape, "optimizer": "torch fused AdamW (bf16, nearest)", "step_ms": round(ms, 2),
          "gbps": round(14 * n / ms / 1e6)})
    del opt
    best = min((k for k in rows if k.startswith("kernel")), key=rows.get)
    emit({"shape": shape, "best_kernel": best, "step_ms": round(rows[best], 2)})
    if "compiled multi-tensor" in rows:
        emit({"shape": shape, "ratio": "best kernel vs compiled multi-tensor",
              "speedup": round(rows["compiled multi-tensor"] / rows[best], 2)})


def numerics() -> None:
    """Nearest rounding: the kernel against optim._adamw_update tensor by tensor (bf16 ulps apart); stochastic:
    the mean of many tiny updates against the exact fp32 trajectory (unbiased rounding keeps it)."""
    import torch
    from ftstudio.engine.train import optim
    from ftstudio.engine.train.optim import CompensatedAdamW

    torch.manual_seed(0)
    shapes = [(4096, 1024), (1000,), (3, 5, 7), (2049,)]
    base = [torch.randn(s, device="cuda") for s in shapes]
    grads = [[torch.randn(s, device="cuda") * 1e-2 for s in shapes] for _ in range(5)]
    ref = [b.bfloat16().clone() for b in base]
    ker = [torch.nn.Parameter(b.bfloat16().clone()) for b in base]
    opt = CompensatedAdamW(ker, lr=1e-3, weight_decay=0.1, rounding="nearest", kernel=True)
    m = [torch.zeros_like(r) for r in ref]; v = [torch.zeros_like(r) for r in ref]
    for t, gs in enumerate(grads, 1):
        for p, g in zip(ker, gs):
            p.grad = g.bfloat16()
        opt.step()
        step = torch.tensor(float(t), device="cuda")
        for r, g, mi, vi in zip(ref, gs, m, v):
            optim._adamw_update(r, g.bfloat16(), mi, vi, None, step, torch.tensor(1e-3, device="cuda"),
                                0.9, 0.999, 1e-8, 0.1, False)
    diff = [(a.float() - b.float()).abs().max().item() for a, b in zip(ker, ref)]
    same = sum((a == b).sum().item() for a, b in zip(ker, ref)) / sum(a.numel() for a in ker)
    emit({"numerics": "nearest vs reference", "max_abs_diff": max(diff), "fraction_identical": round(same, 6)})
    # stochastic: 200 updates of a constant tiny gradient on weights near 1: plain bf16 would not move at all
    w0 = torch.ones(1 << 20, device="cuda")
    p = torch.nn.Parameter(w0.bfloat16().clone())
    opt = CompensatedAdamW([p], lr=1e-5, weight_decay=0.0, rounding="stochastic", kernel=True)
    for _ in range(200):
        p.grad = torch.full_like(p, 1e-3)
        opt.step()
    moved = (1.0 - p.float().mean().item())
    emit({"numerics": "stochastic, 200 steps of lr 1e-5 on weights = 1", "mean_drop": moved,
          "exact_fp32_drop": 200 * 1e-5, "ratio": round(moved / (200 * 1e-5), 4)})


def attention(shape: str, batch: int, seq: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from throughput import SHAPES
    s = SHAPES[shape]
    heads = s.get("num_attention_heads", s["hidden_size"] // 64)
    hd = s["hidden_size"] // heads
    q = torch.randn(batch, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    vv = torch.randn(batch, heads, seq, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv = s.get("num_key_value_heads", heads)
    kg = k[:, :kv].detach().clone().requires_grad_(True)
    vg = vv[:, :kv].detach().clone().requires_grad_(True)
    out, grads = {}, {}
    for name, be, gqa in (("flash", SDPBackend.FLASH_ATTENTION, False), ("cudnn", SDPBackend.CUDNN_ATTENTION, False),
                          ("efficient", SDPBackend.EFFICIENT_ATTENTION, False),
                          ("flash gqa", SDPBackend.FLASH_ATTENTION, True), ("cudnn gqa", SDPBackend.CUDNN_ATTENTION, True)):
        kk, vx = (kg, vg) if gqa else (k, vv)
        run = lambda: F.scaled_dot_product_attention(q, kk, vx, is_causal=True, enable_gqa=gqa)  # noqa: E731
        try:
            with sdpa_kernel([be]):
                for _ in range(3):
                    run().sum().backward()
                torch.cuda.synchronize(); t0 = time.perf_counter()
                for _ in range(20):
                    run().sum().backward()
                torch.cuda.synchronize()
                out[name] = round((time.perf_counter() - t0) / 20 * 1e3, 3)
                if not gqa:
                    q.grad = None
                    o = run()
                    o.float().pow(2).sum().backward()
                    grads[name] = (o.detach().float(), q.grad.float())
                    q.grad = None
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {str(e)[:120]}"
    agree = {}
    if "flash" in grads and "cudnn" in grads:
        (o1, g1), (o2, g2) = grads["flash"], grads["cudnn"]
        agree = {"out_max_diff": (o1 - o2).abs().max().item(), "out_scale": o1.abs().max().item(),
                 "dq_rel_diff": ((g1 - g2).norm() / g1.norm()).item()}
    emit({"attention": shape, "batch": batch, "seq": seq, "ms_fwd_bwd_per_layer": out,
          "layers": s["num_hidden_layers"], "flash_vs_cudnn": agree})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["llama3.2-1b", "llama3-8b"])
    ap.add_argument("--no-compiled", action="store_true", help="skip the compiled path (it compiles for ~45 s)")
    a = ap.parse_args()
    numerics()
    attention("llama3.2-1b", 4, 2048)
    attention("llama3-8b", 1, 4096)
    for i, shape in enumerate(a.shapes):
        optimizers(shape, compiled=not a.no_compiled and i == 0)


if __name__ == "__main__":
    main()
