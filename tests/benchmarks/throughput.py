"""Tokens/s, MFU and peak memory: HF Trainer against our engine's training step, same shape/batch/sequence.

Run on a CUDA machine from the repository root (each configuration in its own process):
    PYTHONUNBUFFERED=1 python tests/benchmarks/throughput.py suite [--only NAME ...] [--out DIR]
    python tests/benchmarks/throughput.py one MODEL MODE BATCH SEQ [key=value ...]     # one JSON line

MODE "hf" is HF Trainer exactly as shared/bench/hf_trainer_anchor.py measures it (bf16=True,
adamw_torch_fused, SDPA, random weights from the public config). MODE "engine" is our trainer's step
(engine/trainer.py ``_loop``) driven on synthetic token batches, because the device machine has no
``datasets`` package: the same pieces in the same order — optim.build_optimizer (param groups, fused or
Kahan/8-bit AdamW, optionally inside backward), schedule.build_scheduler, compiling.compile_blocks,
offload.checkpoint_kwargs + offload_context, lm_loss.training_loss (Liger fused or chunked), autocast for
bf16-mixed, clip (or the in-backward norm), the non-finite check (a GPU sync, as in the trainer),
step, scheduler, zero_grad. Options: precision, compile, loss (with compile, "full" is the compiled head +
cross-entropy), ckpt, offload, optimizer (adamw, adamw8bit, adamw4bit, ...), rounding (bf16 AdamW: stochastic or
kahan), inbwd, sdpa=cudnn, steps.

MFU = (6·N + 12·L·d·s)·tokens / time / 989 TFLOP/s (the anchor's convention).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

SHAPES = {
    "llama3.2-1b": dict(arch="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama3.2-3b": dict(arch="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                        num_attention_heads=24, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama3-8b": dict(arch="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "qwen2.5-14b": dict(arch="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
    "qwen2.5-32b": dict(arch="qwen2", hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
}
# A CPU smoke test of this script (FTS_BENCH_DEVICE=cpu ... one tiny engine 2 64 ...): not a benchmark.
SHAPES["tiny"] = dict(arch="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=256, tie_word_embeddings=True)
DEV = os.environ.get("FTS_BENCH_DEVICE", "cuda")
FASTEST = dict(precision="bf16", compile=1, loss="full")          # the preset: SR AdamW, compiled head + loss
LARGEST = dict(precision="bf16", compile=1, loss="chunked", ckpt=1, offload=1, optimizer="adamw8bit", inbwd=1)
# (name, model, mode, batch, seq, options, time limit s), in priority order
MIXED = dict(precision="bf16-mixed", compile=1, loss="chunked")
SUITE = [
    ("anchor-1b", "llama3.2-1b", "hf", 4, 2048, dict(steps=15), 90),
    ("ours-1b-mixed", "llama3.2-1b", "engine", 4, 2048, dict(MIXED, steps=20), 80),
    ("ours-1b-mixed-fullc", "llama3.2-1b", "engine", 4, 2048, dict(MIXED, loss="full", steps=20), 80),
    ("ours-1b-mixed-cudnn", "llama3.2-1b", "engine", 4, 2048, dict(MIXED, sdpa="cudnn", steps=20), 80),
    ("fastest-1b", "llama3.2-1b", "engine", 4, 2048, dict(FASTEST, steps=15), 80),
    ("fastest-8b", "llama3-8b", "engine", 1, 4096, dict(FASTEST, steps=6), 100),
    ("fastest-8b-b2", "llama3-8b", "engine", 2, 4096, dict(FASTEST, steps=6), 110),
    ("largest-8b", "llama3-8b", "engine", 1, 4096, dict(LARGEST, steps=3), 110),
    ("largest-14b", "qwen2.5-14b", "engine", 1, 4096, dict(LARGEST, steps=3), 200),
    ("largest-32b", "qwen2.5-32b", "engine", 1, 2048, dict(LARGEST, optimizer="adamw4bit", steps=3), 280),
]


def build(name: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    c = dict(SHAPES[name])
    arch = c.pop("arch")
    cfg = (LlamaConfig if arch == "llama" else Qwen2Config)(max_position_embeddings=8192, **c)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)          # build directly in the training dtype: a 32B fp32 copy would not fit
    try:
        with torch.device(DEV):
            m = (LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM)(cfg)
    finally:
        torch.set_default_dtype(old)
    return m


def _sync():
    import torch
    if DEV == "cuda":
        torch.cuda.synchronize()


def _hf(m, data, b, s, steps, warm, times):
    import torch
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class D(Dataset):
        def __len__(self):
            return (steps + warm) * b

        def __getitem__(self, i):
            x = data[i // b, i % b]
            return {"input_ids": x, "labels": x.clone()}

    class T(TrainerCallback):
        def on_step_begin(self, *a, **k):
            torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    args = TrainingArguments(output_dir="/tmp/tr", per_device_train_batch_size=b, max_steps=steps + warm, bf16=True,
                             learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=1, optim="adamw_torch_fused",
                             logging_steps=1000, save_strategy="no", report_to=[], dataloader_num_workers=0,
                             disable_tqdm=True)
    Trainer(model=m, args=args, train_dataset=D(), callbacks=[T()]).train()


def _optimizer(model, o):
    from ftstudio.core.config import OptimConfig
    from ftstudio.engine.train.optim import build_optimizer
    cfg = OptimConfig(optimizer=o.get("optimizer", "adamw"), lr=2e-5, bf16_rounding=o.get("rounding", "stochastic"))
    return build_optimizer(model, cfg, device_type=DEV, in_backward=bool(int(o.get("inbwd", 0))))


def _attention_priority(o):
    """sdpa=cudnn: put cuDNN attention first in SDPA's backend order (before the blocks compile)."""
    from contextlib import nullcontext
    if o.get("sdpa") != "cudnn":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


def _engine(m, data, steps, warm, times, o, res):
    """The trainer's step on synthetic batches (see the module docstring)."""
    import torch
    from ftstudio.core.config import ScheduleConfig
    from ftstudio.engine.train import compiling, offload
    from ftstudio.engine.train import loss as lm_loss
    from ftstudio.engine.train.schedule import build_scheduler

    mixed = o.get("precision", "bf16-mixed") == "bf16-mixed"
    offload = bool(int(o.get("offload", 0)))
    if int(o.get("ckpt", 0)):
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=offload.checkpoint_kwargs(offload))
    if int(o.get("compile", 0)):
        compiling.compile_blocks(m)
    m.train()
    inbwd = bool(int(o.get("inbwd", 0)))
    opt = _optimizer(m, o)
    sched = build_scheduler(opt, steps + warm, ScheduleConfig())
    params = list(m.parameters())
    loss_kind = o.get("loss", "full")
    res["liger"] = loss_kind == "chunked" and lm_loss.liger_available()
    losses = []
    for i in range(steps + warm):
        x = data[i].to(DEV, non_blocking=True)
        _sync()
        t = time.perf_counter()
        with offload.offload_context(offload, DEV), torch.autocast(DEV, dtype=torch.bfloat16, enabled=mixed):
            loss = lm_loss.training_loss(m, {"input_ids": x, "labels": x}, loss=loss_kind,
                                        compiled=bool(int(o.get("compile", 0))))
        loss.backward()
        gn = opt.grad_norm() if inbwd else torch.nn.utils.clip_grad_norm_(params, 1.0)
        if not (torch.isfinite(loss.detach()) and torch.isfinite(gn)):   # the trainer's check (a sync)
            raise RuntimeError(f"non-finite loss/gradient at step {i}")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t)
        losses.append(round(float(loss.detach()), 4))
        print(f"  step {i} {times[-1]:.3f}s loss {losses[-1]}", file=sys.stderr, flush=True)
    res["losses"] = losses


def one(name: str, mode: str, b: int, s: int, opts: dict) -> dict:
    import torch
    from ftstudio.engine.train.mfu import device_name, mfu, peak_tflops, step_flops
    steps, warm = int(opts.get("steps", 8)), int(opts.get("warm", 3 if mode == "hf" else 2))
    res = dict(model=name, mode=mode, batch=b, seq=s, opts=opts)
    t0 = time.perf_counter()
    try:
        dtype = torch.bfloat16 if opts.get("precision") == "bf16" else torch.float32
        m = build(name, dtype)
        n = sum(p.numel() for p in m.parameters())
        res["params"] = n
        g = torch.Generator().manual_seed(1)
        data = torch.randint(0, m.config.vocab_size, (steps + warm, b, s), generator=g)
        times: list[float] = []
        if mode == "hf":
            _hf(m, data, b, s, steps, warm, times)
        else:
            with _attention_priority(opts):
                _engine(m, data, steps, warm, times, opts, res)
        t = sorted(times[warm:])
        med = t[len(t) // 2]
        res["first_step_s"] = round(times[0], 2)
        res["step_s_median"] = med
        res["tokens_per_s"] = b * s / med
        res["card"] = device_name(DEV)
        res["mfu"] = mfu(step_flops(n, m.config.num_hidden_layers, m.config.hidden_size, s, b * s), med,
                         peak_tflops(res["card"]))   # NaN on a card not in train/mfu.py's table
        if DEV == "cuda":
            res["peak_alloc_gb"] = torch.cuda.max_memory_allocated() / 1e9
            res["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    except torch.cuda.OutOfMemoryError:
        res["error"] = "OOM"
        res["peak_alloc_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except Exception as e:  # noqa: BLE001 - one failed configuration must not stop the suite
        import traceback
        traceback.print_exc()
        res["error"] = repr(e)[:400]
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _row(name, r, anchor):
    if "error" in r:
        return f"| {name} | {r['model']} | {r['batch']}×{r['seq']} | {_opts(r)} | error: {r['error'][:80]} | | | | |"
    ratio = tps = mem = ""
    if anchor and "tokens_per_s" in anchor and r is not anchor and r["model"] == anchor["model"] \
            and r["batch"] == anchor["batch"] and r["seq"] == anchor["seq"]:
        tps = f"{r['tokens_per_s'] / anchor['tokens_per_s']:.2f}×"
        mem = f"{r['peak_alloc_gb'] / anchor['peak_alloc_gb']:.2f}×"
    return (f"| {name} | {r['model']} | {r['batch']}×{r['seq']} | {_opts(r)} | {r['tokens_per_s'] / 1e3:.1f} k | "
            f"{100 * r['mfu']:.1f} % | {r['peak_alloc_gb']:.1f} GB | {tps} | {mem} |{ratio}")


def _opts(r):
    if r["mode"] == "hf":
        return "HF Trainer (bf16=True, fused AdamW)"
    o = {k: v for k, v in r["opts"].items() if k not in ("steps", "warm")}
    return ", ".join(f"{k}={v}" for k, v in o.items()) + (" (Liger)" if r.get("liger") else "")


def suite(only: list[str], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    results = {}
    with open(os.path.join(out, "throughput.jsonl"), "a") as f:
        for name, model, mode, b, s, opts, limit in SUITE:
            if only and name not in only:
                continue
            args = [sys.executable, os.path.abspath(__file__), "one", model, mode, str(b), str(s)]
            args += [f"{k}={v}" for k, v in opts.items()]
            print(f"== {name}: {' '.join(args[3:])}", flush=True)
            try:
                p = subprocess.run(args, capture_output=True, text=True, timeout=limit)
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                r = json.loads(line[-1][7:]) if line else dict(model=model, mode=mode, batch=b, seq=s, opts=opts,
                                                               error=f"no result (rc {p.returncode}): "
                                                                     + p.stderr[-300:])
                sys.stderr.write(p.stderr[-1500:])
            except subprocess.TimeoutExpired:
                r = dict(model=model, mode=mode, batch=b, seq=s, opts=opts, error=f"over its {limit} s limit")
            results[name] = r
            f.write(json.dumps(dict(name=name, **r)) + "\n")
            f.flush()
            print("RESULT " + json.dumps(dict(name=name, **r)), flush=True)
    anchor = results.get("anchor-1b")
    lines = ["| run | shape | batch×seq | options | tokens/s | MFU | peak allocated | tokens/s vs HF | memory vs HF |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(n, r, anchor) for n, r in results.items()]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out, "throughput.md"), "w") as f:
        f.write(table + "\n")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "one":
        name, mode, b, s = argv[1], argv[2], int(argv[3]), int(argv[4])
        opts = dict(a.split("=", 1) for a in argv[5:])
        print("RESULT " + json.dumps(one(name, mode, b, s, opts)), flush=True)
    elif argv and argv[0] == "suite":
        only, out = [], os.environ.get("OUT", "/tmp/throughput")
        rest = argv[1:]
        while rest:
            a = rest.pop(0)
            if a == "--out":
                out = rest.pop(0)
            elif a == "--only":
                while rest and not rest[0].startswith("--"):
                    only.append(rest.pop(0))
        suite(only, out)
    else:
        print(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
