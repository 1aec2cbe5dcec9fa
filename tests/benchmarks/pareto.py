"""Pareto benchmark, one device call on one card: HF Trainer, HF Trainer + Liger, Unsloth's full fine-tuning (its
defaults, and checkpointing off) and FT Studio given each Unsloth run's measured peak as its budget
(``--gpu-memory``, no other speed flags), on a random-weight shape saved in bf16 (Llama-3.2-1B, 4 × 2048 by
default); then, while time is left, FT Studio with no flags, ``--preset fastest``, and Fastest with FP8.

    PYTHONUNBUFFERED=1 python tests/benchmarks/pareto.py --unsloth DIR [--shape llama3.2-1b] [--batch 4]
        [--seq 2048] [--steps 25] [--plan-steps 900] [--deadline 480] [--out /tmp/pareto] [--results DIR]

``--unsloth DIR``: a folder made by ``../shared/bench/unsloth_carry.sh`` holding ``unsloth_full_anchor.py`` too
(omit it to skip Unsloth; the budgets are then ``--budgets``). FT Studio runs as a user starts it (``ftstudio
train`` in a subprocess, the real loading path) with ``--max-steps`` = ``--plan-steps``, so the fast defaults
decide compile for a run of that length; it is stopped (two SIGINTs: no checkpoint) once ``--steps`` steps are
logged, and its tokens/s are the median of the trainer's own per-step figures after step 5. HF Trainer and
Unsloth: median step time after 3 warm-up steps, synchronised. Peaks: torch's max_memory_allocated (HF,
Unsloth), the largest allocator peak FT Studio's memory snapshots report. Prints one JSON line per run, then a
markdown table; ``--results DIR`` also writes ``pareto_<card>.jsonl`` and ``pareto_<card>.md`` there.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent), str(HERE)]

HF_CODE = """
import json, sys, time, torch
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, TrainerCallback
from torch.utils.data import Dataset
path, b, s, steps, liger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
warm = 3
m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cuda", attn_implementation="sdpa")
g = torch.Generator().manual_seed(1)
data = torch.randint(0, m.config.vocab_size, (steps + warm, b, s), generator=g)
class D(Dataset):
    def __len__(self): return (steps + warm) * b
    def __getitem__(self, i):
        x = data[i // b, i % b]; return {"input_ids": x, "labels": x.clone()}
times = []
class T(TrainerCallback):
    def on_step_begin(self, *a, **k): torch.cuda.synchronize(); self.t = time.perf_counter()
    def on_step_end(self, *a, **k): torch.cuda.synchronize(); times.append(time.perf_counter() - self.t)
args = TrainingArguments(output_dir="/tmp/hf-pareto", per_device_train_batch_size=b, max_steps=steps + warm,
                         bf16=True, learning_rate=2e-5, lr_scheduler_type="cosine", warmup_steps=1,
                         optim="adamw_torch_fused", logging_steps=1000, save_strategy="no", report_to=[],
                         dataloader_num_workers=0, disable_tqdm=True, use_liger_kernel=liger)
Trainer(model=m, args=args, train_dataset=D(), callbacks=[T()]).train()
t = sorted(times[warm:]); med = t[len(t) // 2]
print("RESULT " + json.dumps({"tokens_per_s": b * s / med, "peak_alloc_gb": torch.cuda.max_memory_allocated() / 1e9}))
"""


def emit(d: dict) -> dict:
    print(json.dumps(d), flush=True)
    return d


def _result(text: str) -> dict | None:
    found = re.findall(r"^RESULT (\{.*\})$", text, re.M)
    return json.loads(found[-1]) if found else None


def run_anchor(name: str, cmd: list[str], timeout: int, pythonpath: str) -> dict:
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": pythonpath})
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"timeout after {timeout} s: {(e.stdout or b'')[-800:]!r}", -1
    res = {"run": name, "rc": rc, "wall_s": round(time.perf_counter() - t, 1)}
    got = _result(text)
    res.update(got if got else {"error": text[-1500:]})
    return emit(res)


def ours(name: str, flags: list[str], model: Path, data: Path, out: Path, a) -> dict:
    """``ftstudio train`` as a user starts it, stopped after ``a.steps`` logged steps (no checkpoint written)."""
    run_dir = out / "runs" / name
    cmd = [sys.executable, "-m", "ftstudio", "train", "--model", str(model), "--dataset", str(data),
           "--output", str(out / "runs"), "--run-name", name, "--batch-size", str(a.batch), "--seq-len",
           str(a.seq), "--max-steps", str(a.plan_steps), "--val-fraction", "0", "--log-every", "1",
           "--memory-snapshot-every", "5", "--checkpoint-every", "0", "--no-export", *flags]
    log = open(out / f"{name}.log", "w")
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "COLUMNS": "400",           # one log line per decision (no wrapping)
                              "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    metrics = run_dir / "metrics.jsonl"
    events: list[dict] = []
    while p.poll() is None and time.perf_counter() - t < a.timeout:
        time.sleep(1.0)
        if metrics.exists():
            events = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
            if sum(e.get("event") == "step" for e in events) >= a.steps:
                break
    if p.poll() is None:                      # stop: the first signal asks, the second skips the checkpoint
        os.killpg(p.pid, signal.SIGINT)
        time.sleep(1.0)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    log.close()
    text = (out / f"{name}.log").read_text(errors="replace")
    if metrics.exists():
        events = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip().endswith("}")]
    steps = [e for e in events if e.get("event") == "step"]
    peaks = [e["allocated_peak"] for e in events if e.get("event") == "memory" and e.get("allocated_peak")]
    res = {"run": name, "flags": " ".join(flags) or "(none)", "wall_s": round(time.perf_counter() - t, 1),
           "steps": len(steps)}
    tps = [s["tokens_per_s"] for s in steps if s["step"] > 5]
    if not tps:
        res["error"] = text[-1500:]
        return emit(res)
    res["tokens_per_s"] = statistics.median(tps)
    res["peak_alloc_gb"] = max(peaks) / 1e9 if peaks else None
    res["losses"] = [round(s["loss"], 4) for s in steps]
    res["first_step_s"] = round(steps[0].get("elapsed_s", 0.0), 1)
    res["decisions"] = re.findall(r"(?:Fast defaults|Memory budget|Rejected|Traced plan|FP8|Precision|Activation checkpointing|Optimizer)[^\n]*", text)[:14]
    return emit(res)


def table(rows: list[dict], card: str, a) -> str:
    hf = next((r for r in rows if r["run"] == "hf-trainer" and "tokens_per_s" in r), None)
    lines = [f"Card: {card}; shape {a.shape}, {a.batch} × {a.seq}, random weights saved in bf16; one device call.",
             "", "| run | budget | tokens/s | × HF Trainer | × Unsloth at that budget | peak allocated |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['run']} | | error | | | |")
            continue
        vs_hf = f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}" if hf else ""
        anchor = next((u for u in rows if u["run"] == r.get("against") and "tokens_per_s" in u), None)
        vs_u = f"**{r['tokens_per_s'] / anchor['tokens_per_s']:.2f}**" if anchor else ""
        peak = f"{r['peak_alloc_gb']:.1f} GB" if r.get("peak_alloc_gb") else ""
        lines.append(f"| {r['run']} {r.get('flags', '')} | {r.get('budget_gb', '')} | {r['tokens_per_s'] / 1e3:.1f} k "
                     f"| {vs_hf} | {vs_u} | {peak} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=25, help="FT Studio: logged steps before the stop")
    ap.add_argument("--anchor-steps", type=int, default=15)
    ap.add_argument("--plan-steps", type=int, default=900, help="FT Studio's --max-steps: the run length planned")
    ap.add_argument("--unsloth", default=None)
    ap.add_argument("--anchors", default="hf-trainer,hf-trainer+liger,unsloth-unsloth,unsloth-none",
                    help="which anchors run (a short call: hf-trainer,unsloth-unsloth)")
    ap.add_argument("--budgets", default="10.7,18.7", help="GB, when Unsloth is not run (issue 33's H100 peaks)")
    ap.add_argument("--extras", default="defaults,fastest,fastest-fp8", help="runs after the budgets, time allowing")
    ap.add_argument("--deadline", type=float, default=480.0, help="seconds: no new run starts after this")
    ap.add_argument("--run", action="append", default=[], metavar="NAME:FLAGS",
                    help="another FT Studio run after the extras (time allowing), e.g. 'fp8-ib:--preset fastest "
                         "--optimizer-in-backward'; repeatable")
    ap.add_argument("--timeout", type=int, default=200)
    ap.add_argument("--out", default="/tmp/pareto")
    ap.add_argument("--results", default=None)
    a = ap.parse_args()
    import torch
    from defaults_gpu import make_model
    from trainer_speed import make_data

    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name()
    model = out / f"model-{a.shape}"
    n = make_model(a.shape, model)
    data = make_data(out / "docs.jsonl", a.batch * a.seq * 60, words_per_doc=int(a.seq * 1.3))   # full rows
    emit({"card": card, "torch": torch.__version__, "params": n, "setup_s": round(time.perf_counter() - t0, 1)})
    site = os.environ.get("PYTHONPATH", "")
    rows = []
    common = [str(model), str(a.batch), str(a.seq), str(a.anchor_steps)]
    anchors = set(a.anchors.split(","))
    for name, liger in (("hf-trainer", "0"), ("hf-trainer+liger", "1")):
        if name in anchors:
            rows.append(run_anchor(name, [sys.executable, "-c", HF_CODE, *common, liger], a.timeout, site))
    budgets = [float(x) for x in a.budgets.split(",")]
    against = [None] * len(budgets)
    if a.unsloth:
        script = str(Path(a.unsloth) / "unsloth_full_anchor.py")
        for i, gc in enumerate(("unsloth", "none")):
            if f"unsloth-{gc}" not in anchors:
                continue
            r = run_anchor(f"unsloth-{gc}", [sys.executable, script, *common, gc], a.timeout + 100,
                           os.pathsep.join([a.unsloth, site]))
            rows.append(r)
            if r.get("peak_alloc_gb"):
                budgets[i], against[i] = round(r["peak_alloc_gb"], 2), r["run"]
    for budget, anchor in zip(budgets, against):
        r = ours(f"fts-budget-{budget:g}", ["--gpu-memory", f"{budget:g}"], model, data, out, a)
        r.update(budget_gb=budget, against=anchor)
        rows.append(r)
    extras = {"defaults": [], "fastest": ["--preset", "fastest"],
              "fastest-fp8": ["--preset", "fastest", "--fp8", "tensorwise"]}
    for spec in a.run:
        name, _, flags = spec.partition(":")
        extras[name] = flags.split()
    for name in [x for x in a.extras.split(",") if x] + [spec.partition(":")[0] for spec in a.run]:
        if time.perf_counter() - t0 > a.deadline:
            emit({"skipped": name, "reason": f"past the {a.deadline:.0f} s deadline"})
            continue
        rows.append(ours(f"fts-{name}", extras[name], model, data, out, a))
    md = table(rows, card, a)
    print(md, flush=True)
    if a.results:
        tag = re.sub(r"[^a-z0-9]+", "_", card.lower()).strip("_")
        res = Path(a.results)
        res.mkdir(parents=True, exist_ok=True)
        with open(res / f"pareto_{tag}.jsonl", "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps({**r, "card": card, "shape": a.shape, "batch": a.batch, "seq": a.seq}) + "\n")
        (res / f"pareto_{tag}.md").write_text(md + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
