"""Predicted (ftstudio.engine.memory.estimate) against measured peak GPU memory of a full fine-tuning step.

Run on a CUDA machine from the repository root:
    PYTHONUNBUFFERED=1 python tests/benchmarks/memory_accuracy.py [--out results.md] [--jsonl raw.jsonl]

Each configuration runs in its own process: a random-weight model built from the public config of
Qwen2.5-0.5B, Llama-3.2-1B or Llama-3.2-3B, trained for 3 steps the way our trainer does it (HF forward
with labels or the chunked loss of engine/memory_loss.py; bf16-mixed = fp32 weights + autocast; fused AdamW;
non-reentrant gradient checkpointing; clip; zero_grad(set_to_none=True)). The table compares the
allocator's peak (torch.cuda.max_memory_allocated / max_memory_reserved) over those steps with the plan,
and checks that measure() counts the same weight / gradient / optimizer bytes as the plan.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SHAPES = {  # the public configs (as in shared/bench/hf_trainer_anchor.py)
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "llama3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                        tie_word_embeddings=True),
    "llama3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                        num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                        tie_word_embeddings=True),
}

# (shape, batch, seq, precision, optimizer, checkpointing, loss, grad_accum)
CONFIGS = [
    ("qwen2.5-0.5b", 8, 2048, "bf16-mixed", "adamw", False, "full", 1),
    ("qwen2.5-0.5b", 4, 1024, "bf16-mixed", "adamw", True, "full", 1),
    ("qwen2.5-0.5b", 8, 2048, "bf16-mixed", "adamw", False, "chunked", 1),
    ("qwen2.5-0.5b", 4, 2048, "bf16", "adamw", False, "full", 1),
    ("qwen2.5-0.5b", 2, 4096, "bf16-mixed", "sgd", True, "chunked", 1),
    ("qwen2.5-0.5b", 16, 1024, "bf16-mixed", "adamw", True, "chunked", 1),
    ("llama3.2-1b", 4, 2048, "bf16-mixed", "adamw", False, "full", 1),
    ("llama3.2-1b", 8, 2048, "bf16-mixed", "adamw", True, "full", 1),
    ("llama3.2-1b", 4, 2048, "bf16-mixed", "adafactor", False, "chunked", 1),
    ("llama3.2-1b", 2, 4096, "fp16-mixed", "adamw", False, "full", 1),
    ("llama3.2-1b", 4, 1024, "bf16-mixed", "adamw", False, "full", 2),
    ("llama3.2-1b", 1, 512, "fp32", "adamw", False, "full", 1),
    ("llama3.2-3b", 2, 2048, "bf16-mixed", "adamw", False, "full", 1),
    ("llama3.2-3b", 4, 2048, "bf16-mixed", "adamw", True, "chunked", 1),
    ("llama3.2-3b", 4, 2048, "bf16", "adamw", True, "full", 1),
]


def run_config(shape, b, s, prec, opt, ckpt, loss, accum):
    from ftstudio.core.config import RunConfig
    return RunConfig().replace(device="cuda", batch_size=b, seq_len=s, precision=prec, optimizer=opt,
                               activation_checkpointing=ckpt, loss=loss, grad_accum=accum)


def build(name, precision):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    c = dict(SHAPES[name])
    mt = c.pop("model_type")
    cfg = (LlamaConfig if mt == "llama" else Qwen2Config)(max_position_embeddings=8192, **c)
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = (LlamaForCausalLM if mt == "llama" else Qwen2ForCausalLM)(cfg)
    return m.to(torch.bfloat16) if precision == "bf16" else m.float()


def make_optimizer(params, name):
    import torch
    if name == "adamw":
        return torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=True)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-3)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    raise ValueError(name)


def one(spec) -> dict:
    """One configuration in this process: 3 optimizer steps, the peaks of each phase of the last."""
    import torch
    from ftstudio.engine.memory import estimate, measure
    from ftstudio.engine.train.loss import causal_lm_loss
    shape, b, s, prec, optn, ckpt, loss, accum = spec
    res = dict(shape=shape, batch=b, seq=s, precision=prec, optimizer=optn, ckpt=ckpt, loss=loss, accum=accum)
    model = build(shape, prec)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = make_optimizer(model.parameters(), optn)
    scaler = torch.amp.GradScaler("cuda") if prec == "fp16-mixed" else None
    amp = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(prec)
    g = torch.Generator().manual_seed(1)
    V = model.config.vocab_size
    phases = {}
    overall = 0
    for step in range(3):
        last = step == 2
        for micro in range(accum):
            x = torch.randint(0, V, (b, s), generator=g).cuda()
            batch = {"input_ids": x, "labels": x}
            if last:
                overall = max(overall, torch.cuda.max_memory_allocated()); torch.cuda.reset_peak_memory_stats()
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                l = causal_lm_loss(model, batch, chunked=(loss == "chunked"))
            if last:
                torch.cuda.synchronize()
                phases[f"fwd{micro}"] = torch.cuda.max_memory_allocated()
                phases[f"after_fwd{micro}"] = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            l = l / accum
            (scaler.scale(l) if scaler else l).backward()
            if last:
                torch.cuda.synchronize()
                phases[f"bwd{micro}"] = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler:
            scaler.step(opt); scaler.update()
        else:
            opt.step()
        if last:
            torch.cuda.synchronize()
            phases["opt"] = torch.cuda.max_memory_allocated()
            snap = measure(model, opt, "cuda", step, reset_peak=False)
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    res["phases"] = phases
    res["peak_alloc"] = max([overall, torch.cuda.max_memory_allocated()] + [v for k, v in phases.items()
                                                                           if not k.startswith("after")])
    res["peak_reserved"] = torch.cuda.max_memory_reserved()
    res["measured_states"] = [snap.weights, snap.gradients, snap.optimizer]
    res["nvml_used"] = snap.nvml_used
    est = estimate(SHAPES[shape], run_config(*spec))
    res["planned_states"] = [est.weights, est.gradients, est.optimizer]
    return res


def predict(r) -> dict:
    from ftstudio.engine.memory import estimate
    spec = (r["shape"], r["batch"], r["seq"], r["precision"], r["optimizer"], r["ckpt"], r["loss"], r["accum"])
    est = estimate(SHAPES[r["shape"]], run_config(*spec))
    return dict(alloc=est.peak_allocated, reserved=est.peak_reserved, phase=est.peak_phase, total=est.total)


def table(rows) -> str:
    head = ("| model | b | s | precision | optimizer | ckpt | loss | accum | predicted alloc GB | measured alloc GB "
            "| error | predicted reserved GB | measured reserved GB | error | peak phase (plan) |")
    out = [head, "|" + "---|" * 15]
    ea, er = [], []
    for r in rows:
        if "error" in r:
            out.append(f"| {r['shape']} | {r['batch']} | {r['seq']} | {r['precision']} | {r['optimizer']} | "
                       f"{r['ckpt']} | {r['loss']} | {r['accum']} | {r['error']} |||||||")
            continue
        p = predict(r)
        a = (p["alloc"] - r["peak_alloc"]) / r["peak_alloc"]
        e = (p["reserved"] - r["peak_reserved"]) / r["peak_reserved"]
        ea.append(abs(a)); er.append(abs(e))
        out.append(f"| {r['shape']} | {r['batch']} | {r['seq']} | {r['precision']} | {r['optimizer']} | "
                   f"{'on' if r['ckpt'] else 'off'} | {r['loss']} | {r['accum']} | {p['alloc'] / 1e9:.2f} | "
                   f"{r['peak_alloc'] / 1e9:.2f} | {a:+.1%} | {p['reserved'] / 1e9:.2f} | "
                   f"{r['peak_reserved'] / 1e9:.2f} | {e:+.1%} | {p['phase']} |")
    if ea:
        out.append("")
        out.append(f"allocated: median |error| {statistics.median(ea):.1%}, worst {max(ea):.1%}; "
                   f"reserved: median |error| {statistics.median(er):.1%}, worst {max(er):.1%} "
                   f"({len(ea)} configurations)")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--jsonl", help="write the raw measurements here (one JSON line per configuration)")
    ap.add_argument("--from-jsonl", help="recompute the table from saved measurements (no GPU needed)")
    ap.add_argument("--only", type=int, nargs="*", help="indices into CONFIGS")
    ap.add_argument("--expandable-segments", action="store_true",
                    help="run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (as our trainer does)")
    a = ap.parse_args()
    if a.expandable_segments:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    if a.one:
        print("RESULT " + json.dumps(one(json.loads(a.one))), flush=True)
        return 0
    if a.from_jsonl:
        rows = [json.loads(l) for l in open(a.from_jsonl) if l.strip()]
    else:
        rows = []
        for i, spec in enumerate(CONFIGS):
            if a.only and i not in a.only:
                continue
            t = time.time()
            p = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                               text=True, timeout=300)
            line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
            r = json.loads(line[7:]) if line else dict(zip(("shape", "batch", "seq", "precision", "optimizer",
                                                             "ckpt", "loss", "accum"), spec),
                                                         error=(p.stderr.strip().splitlines() or ["?"])[-1][:120])
            r["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
            rows.append(r)
            print(f"[{i + 1}/{len(CONFIGS)}] {spec} {time.time() - t:.0f}s "
                  f"{r.get('peak_alloc', 0) / 1e9:.2f} GB {r.get('error', '')}", flush=True)
            if a.jsonl:
                with open(a.jsonl, "a") as f:
                    f.write(json.dumps(r) + "\n")
    md = table(rows)
    print(md)
    if a.out:
        cmd = "PYTHONUNBUFFERED=1 python tests/benchmarks/memory_accuracy.py " + " ".join(sys.argv[1:])
        with open(a.out, "w") as f:
            f.write("# Memory plan against measured peak (H200)\n\nMade with `" + cmd + "`.\n\n" + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
