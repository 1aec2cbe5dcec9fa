"""The FP8-state AdamW (train/fp8_state_adamw.py) on a GPU: its Triton kernel against its torch path, and its
step time against the bf16-state AdamW kernel (optim.CompensatedAdamW), both on one model's tensors in one process.

    python tests/benchmarks/fp8_adamw_gpu.py [--shape llama3.2-1b] [--steps 20] [--out FILE.jsonl]

Checks: with stochastic rounding off, the kernel's weights and moments equal the torch path's (max abs difference
printed; FP8 codes may differ by one step where an fp32 tie-break differs); with it on, the mean weight after 50
steps on one tensor is within noise of the round-to-nearest fp32 reference. Prints one JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def emit(out, d):
    print(json.dumps(d), flush=True)
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(d) + "\n")


def main() -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    import ftstudio.engine.train.fp8_state_adamw as F
    from ftstudio.engine.train.optim import CompensatedAdamW

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name()
    # 1. kernel against the torch path, no stochastic rounding, odd sizes included
    torch.manual_seed(0)
    worst = {}
    for n in (17, 256, 2048 + 5, 1 << 20, 3 * (1 << 22) + 300):
        for dt in (torch.bfloat16, torch.float32):
            ps = [torch.nn.Parameter((torch.randn(n, device=dev) * 0.02).to(dt)) for _ in range(2)]
            ps[1].data.copy_(ps[0].data)
            opts = [F.Fp8StateAdamW([ps[0]], lr=1e-3, stochastic=False, kernel=True),
                    F.Fp8StateAdamW([ps[1]], lr=1e-3, stochastic=False, kernel=False)]
            for _ in range(5):
                g = torch.randn(n, device=dev).to(dt) * 1e-3
                for p, o in zip(ps, opts):
                    p.grad = g.clone()
                    o.step()
            s0, s1 = opts[0].state[ps[0]], opts[1].state[ps[1]]
            worst[f"{n}-{str(dt)[6:]}"] = {
                "weight": float((ps[0].float() - ps[1].float()).abs().max()),
                "m": float((F.dequantize(s0["exp_avg"], s0["exp_avg_scale"])
                            - F.dequantize(s1["exp_avg"], s1["exp_avg_scale"])).abs().max()),
                "m_scale": float((s0["exp_avg_scale"] - s1["exp_avg_scale"]).abs().max())}
    emit(a.out, {"check": "kernel_vs_torch_nearest", "card": card, "max_abs_diff": worst})
    # 2. stochastic rounding: tiny updates survive on bf16 weights
    w = torch.nn.Parameter(torch.full((1 << 20,), 1.0, device=dev, dtype=torch.bfloat16))
    o = F.Fp8StateAdamW([w], lr=1e-5, weight_decay=0.0)
    for _ in range(50):
        w.grad = torch.ones_like(w)
        o.step()
    emit(a.out, {"check": "stochastic_bf16", "mean_weight": float(w.float().mean()),
                 "expected": 1.0 - 50 * 1e-5, "nearest_would_be": 1.0})
    # 3. step time on a model's tensors, both optimizers, one process
    presets = {"llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                   tie_word_embeddings=True),
               "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)}
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**presets[a.shape]), dtype=torch.bfloat16)
    params = [p for p in model.parameters()]
    n = sum(p.numel() for p in params)
    for name, make in (("bf16-state (CompensatedAdamW kernel)",
                        lambda: CompensatedAdamW(params, lr=1e-5, rounding="stochastic")),
                       ("fp8-state (Fp8StateAdamW kernel)", lambda: F.Fp8StateAdamW(params, lr=1e-5)),
                       ("fp8-state torch path", lambda: F.Fp8StateAdamW(params, lr=1e-5, kernel=False))):
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for i in range(a.steps):
            torch.cuda.synchronize()
            t = time.perf_counter()
            opt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        state = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                    if torch.is_tensor(v))
        med = sorted(times[2:])[len(times[2:]) // 2]
        emit(a.out, {"optimizer": name, "card": card, "shape": a.shape, "params": n, "step_ms": round(med * 1e3, 2),
                     "first_step_s": round(times[0], 2), "state_gb": round(state / 1e9, 3),
                     "step_peak_over_base_gb": round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)})
        del opt
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
