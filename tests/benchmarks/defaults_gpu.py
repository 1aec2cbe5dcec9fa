"""Issue 18 on one GPU, in one call: `ftstudio train` as a user runs it (a subprocess, the real loading path
from a bf16 checkpoint on disk) with no speed flags and with `--preset fastest`, and HF Trainer on the same
shape and data, each under `/usr/bin/time -v` for the host peak RSS; plus the multi-tensor bf16 AdamW against
the per-tensor one on the model's tensors. One JSON line per result, then the ratios.

    PYTHONUNBUFFERED=1 python tests/benchmarks/defaults_gpu.py [--shape llama3.2-1b] [--batch 4] [--seq 2048]
        [--steps 800] [--hf-steps 30] [--out DIR]

--steps: long enough for the fast defaults to choose compile (it repays ~30 s of compiling only over a run
of a few minutes: the script prints the decision the trainer will make); tokens/s are medians of the
trainer's own StepMetrics after step 10 (HF: of the steps after 3 warm-up steps, synchronised), and the first
step's wall time is the compile figure. Rows are random-word documents longer than --seq (full rows, as HF's).
Runs on a machine with torch, transformers and accelerate; nothing else needed (no datasets, liger, torchao).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent), str(HERE)]


def emit(d: dict) -> None:
    print(json.dumps(d), flush=True)


def make_model(shape: str, folder: Path) -> Path:
    import torch
    os.environ["FTS_BENCH_DEVICE"] = "cuda" if torch.cuda.is_available() else "cpu"
    import throughput
    from tiny import make_tokenizer

    throughput.DEV = os.environ["FTS_BENCH_DEVICE"]
    m = throughput.build(shape, torch.bfloat16)          # built on the GPU (torch.device), saved in bf16
    tok = make_tokenizer()
    m.config.pad_token_id = tok.pad_token_id
    m.save_pretrained(folder, max_shard_size="5GB")      # hub-style 5 GB shards (transformers 5 writes 50 GB)
    tok.save_pretrained(folder)
    n = sum(p.numel() for p in m.parameters())
    del m
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return n


def timed(cmd: list[str], timeout: int, env: dict | None = None) -> tuple[int, str, float, float]:
    """(rc, output, host peak RSS in GB from /usr/bin/time -v, wall s)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {}),
                            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    wall = time.perf_counter() - t
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return p.returncode, p.stdout + p.stderr, (int(rss.group(1)) / 1e6 if rss else float("nan")), wall


PARAMS: dict[str, int] = {}     # model folder → parameter count (set by main)


def ours(name: str, extra: list[str], model: Path, data: Path, out: Path, a) -> dict:
    env = dict(x.split("=", 1) for x in extra if re.fullmatch(r"FTS_[A-Z_]+=\S*", x))   # per-run switches
    extra = [x for x in extra if not re.fullmatch(r"FTS_[A-Z_]+=\S*", x)]
    cmd = [sys.executable, "-m", "ftstudio", "train", "--model", str(model), "--dataset", str(data),
           "--output", str(out), "--run-name", name, "--batch-size", str(a.batch), "--seq-len", str(a.seq),
           "--max-steps", str(a.steps), "--val-fraction", "0", "--log-every", "1", "--memory-snapshot-every", "50",
           "--checkpoint-every", "0", "--no-export", *extra]
    rc, text, rss, wall = timed(cmd, a.timeout, env)
    res = {"run": name, "flags": " ".join([*(f"{k}={v}" for k, v in env.items()), *extra]) or "(none)", "rc": rc, "host_peak_rss_gb": round(rss, 2),
           "wall_s": round(wall, 1)}
    metrics = out / name / "metrics.jsonl"
    if rc != 0 or not metrics.exists():
        res["error"] = text[-1500:]
        return res
    steps, peaks = [], []
    for line in metrics.read_text().splitlines():
        e = json.loads(line)
        if e.get("event") == "step":
            steps.append(e)
        elif e.get("event") == "memory" and e.get("allocated_peak"):
            peaks.append(e["allocated_peak"])
    warm = 10 if len(steps) > 20 else len(steps) // 2          # a short run (a 32B start): its second half
    tps = [s["tokens_per_s"] for s in steps if s["step"] > warm]
    res["tokens_per_s"] = round(statistics.median(tps)) if tps else None
    res["peak_alloc_gb"] = round(max(peaks) / 1e9, 2) if peaks else None
    losses = [s["loss"] for s in steps if isinstance(s.get("loss"), (int, float))]
    res["loss_first_last"] = [round(losses[0], 4), round(statistics.mean(losses[-10:]), 4)] if losses else None
    res["losses"] = [round(x, 5) for x in losses]          # per logged step: runs compared step by step
    if res["tokens_per_s"]:
        c = json.loads((model / "config.json").read_text())
        n = c.get("_params") or PARAMS.get(str(model))
        flops = 6 * n + 12 * c["num_hidden_layers"] * c["hidden_size"] * a.seq    # per token
        res["mfu_989"] = round(flops * res["tokens_per_s"] / 989e12, 3)
    if len(steps) > 11:
        steady = statistics.median(b["elapsed_s"] - a_["elapsed_s"] for a_, b in zip(steps[10:], steps[11:]))
        res["first_step_s"] = round(steps[0]["elapsed_s"], 1)            # includes compiling, when chosen
        res["compile_s_est"] = round(steps[0]["elapsed_s"] - steady, 1)
    res["decisions"] = re.findall(r"(?:Fast defaults|FP8)[^\n]*", text)[:8]
    return res


def hf(model: Path, a) -> dict:
    """HF Trainer as the issue's anchor runs it: fp32 weights on the GPU, bf16=True, fused AdamW, SDPA."""
    code = f"""
import json, time, torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, TrainerCallback
from torch.utils.data import Dataset
b, s, steps, warm = {a.batch}, {a.seq}, {a.hf_steps}, 3
m = AutoModelForCausalLM.from_pretrained({str(model)!r}, dtype=torch.float32, device_map="cuda",
                                         attn_implementation="sdpa")
g = torch.Generator().manual_seed(1)
data = torch.randint(0, 1000, (steps + warm, b, s), generator=g)
class D(Dataset):
    def __len__(self): return (steps + warm) * b
    def __getitem__(self, i):
        x = data[i // b, i % b]; return {{"input_ids": x, "labels": x.clone()}}
times = []
class T(TrainerCallback):
    def on_step_begin(self, *a, **k): torch.cuda.synchronize(); self.t = time.perf_counter()
    def on_step_end(self, *a, **k): torch.cuda.synchronize(); times.append(time.perf_counter() - self.t)
args = TrainingArguments(output_dir="/tmp/hf-defaults", per_device_train_batch_size=b, max_steps=steps + warm,
                         bf16=True, learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=1,
                         optim="adamw_torch_fused", logging_steps=1000, save_strategy="no", report_to=[],
                         dataloader_num_workers=0, disable_tqdm=True)
Trainer(model=m, args=args, train_dataset=D(), callbacks=[T()]).train()
t = sorted(times[warm:]); med = t[len(t) // 2]
print("HF " + json.dumps({{"tokens_per_s": round(b * s / med), "peak_alloc_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}}))
"""
    rc, text, rss, wall = timed([sys.executable, "-c", code], a.timeout)
    res = {"run": "hf-trainer", "rc": rc, "host_peak_rss_gb": round(rss, 2), "wall_s": round(wall, 1)}
    found = re.search(r"^HF (\{.*\})$", text, re.M)
    res.update(json.loads(found.group(1)) if found else {"error": text[-1500:]})
    return res


def optimizer_bench(shape: str) -> list[dict]:
    """The bf16 AdamW step alone on the shape's tensors: per-tensor compiled vs multi-tensor (compiled, eager)."""
    import torch
    from ftstudio.engine.train import optim
    from ftstudio.engine.train.optim import CompensatedAdamW
    import throughput

    m = throughput.build(shape, torch.bfloat16)
    params = [p for p in m.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    out = []
    for name, foreach, eager in (("per-tensor compiled", False, False), ("multi-tensor compiled", True, False),
                                 ("multi-tensor eager", True, True)):
        if eager:
            optim._COMPILED_FOREACH = optim._adamw_update_foreach
        opt = CompensatedAdamW(params, lr=1e-5, rounding="stochastic", foreach=foreach)
        torch.cuda.synchronize(); t0 = time.perf_counter()
        opt.step(); torch.cuda.synchronize()
        first = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(10):
            opt.step()
        torch.cuda.synchronize()
        out.append({"optimizer": name, "step_ms": round((time.perf_counter() - t0) * 100, 2),
                    "first_step_s": round(first, 1),
                    "transient_gb": round((torch.cuda.max_memory_allocated() - base) / 1e9, 2)})
        del opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--hf-steps", type=int, default=30)
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--skip", nargs="*", default=[], help="any of: hf defaults fastest optimizer")
    ap.add_argument("--out", default="/tmp/defaults-gpu")
    ap.add_argument("--run", action="append", default=[], metavar="NAME:FLAGS",
                    help='one more `ftstudio train` run, e.g. "largest:--preset largest --optimizer adamw4bit"')
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    model = out / f"model-{a.shape}"
    n = make_model(a.shape, model)
    PARAMS[str(model)] = n
    from trainer_speed import make_data
    # full rows, a fresh one every step of the longest run (one epoch: no row seen twice)
    data = make_data(out / "docs.jsonl", int(a.batch * a.seq * 1.3) * (max(200, a.steps) + 10),
                     words_per_doc=int(a.seq * 1.3))
    from ftstudio.engine.train.fast_path import compile_pays
    pays, eager_s = compile_pays(a.steps, n, a.batch * a.seq)
    shard = max(f.stat().st_size for f in model.glob("*.safetensors")) / 1e9
    emit({"setup_s": round(time.perf_counter() - t, 1), "params": n, "largest_shard_gb": round(shard, 2),
          "compile_chosen_by_default": pays, "eager_estimate_s": round(eager_s)})
    results = {}
    if "hf" not in a.skip:
        results["hf"] = hf(model, a); emit(results["hf"])
    if "defaults" not in a.skip:
        results["defaults"] = ours("defaults", [], model, data, out, a); emit(results["defaults"])
    if "fastest" not in a.skip:
        results["fastest"] = ours("fastest", ["--preset", "fastest"], model, data, out, a); emit(results["fastest"])
    for spec in a.run:
        name, _, flags = spec.partition(":")
        results[name] = ours(name, flags.split(), model, data, out, a); emit(results[name])
    base = results.get("hf", {})
    for key in [k for k in results if k != "hf"]:
        r = results.get(key, {})
        if base.get("tokens_per_s") and r.get("tokens_per_s"):
            emit({"ratio": key, "speed_vs_hf": round(r["tokens_per_s"] / base["tokens_per_s"], 3),
                  "peak_vs_hf": round((r.get("peak_alloc_gb") or 0) / base["peak_alloc_gb"], 3),
                  "host_rss_vs_hf": round(r["host_peak_rss_gb"] / base["host_peak_rss_gb"], 3)})
    if "optimizer" not in a.skip:
        for row in optimizer_bench(a.shape):
            emit(row)


if __name__ == "__main__":
    main()
