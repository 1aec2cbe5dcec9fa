"""Forgetting taken back after the fact: fine-tune a model at a 10× learning rate on the instruction set of
make_instructions.py, score base and fine-tuned on a local multiple-choice task through lm-evaluation-harness,
then sweep θ(α) = (1−α)·θ0 + α·θ* on the task (validation loss), on retention (general text) and on the
benchmark, and report what the chosen α keeps and recovers.

    python tests/benchmarks/interpolation.py --model SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --out DIR
    python tests/benchmarks/interpolation.py --model TINY_HF_FOLDER --device cpu --max-steps 20 --out DIR  (smoke)

Writes DIR/interpolation.md (the tables), DIR/interpolation.json (every figure and setting) and the sweep's curve
(DIR/interpolation.png). Needs lm-evaluation-harness (pip install 'ftstudio[eval]') and matplotlib.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from ftstudio.core.config import RunConfig  # noqa: E402
from ftstudio.core.events import RetentionMetrics, RunFailed  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a GGUF file (de-quantised once) or an HF folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--lr", type=float, default=2e-4, help="10× the seed's 2e-5 by default: forgetting shows")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap the fine-tune (a smoke run)")
    ap.add_argument("--tasks", default="instructions_mc,ftstudio_general_mc",
                    help="harness tasks for before/after and the sweep (instructions_mc: the fine-tune's own task, "
                         "tasks/instructions_mc.yaml; ftstudio_general_mc: general knowledge, bundled)")
    ap.add_argument("--include-path", default=str(Path(__file__).parent / "tasks"), help="task YAML folder")
    ap.add_argument("--limit", type=int, default=None, help="documents per task (a smoke run)")
    ap.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from ftstudio.engine import run as train
    from ftstudio.engine.alpha_sweep import sweep_alphas
    from ftstudio.engine.benchmarks import BenchSettings, run_benchmarks
    from make_instructions import make

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="interpolation-"))
    model = Path(args.model)
    if model.suffix == ".gguf":
        from forgetting import dequantise
        model = dequantise(model, work / "model")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make(1000, seed=1)), encoding="utf-8")
    leaves = dict(source=str(model), dataset=str(data), output=str(work / "runs"), run_name="tenx", device=args.device,
                  lr=args.lr, schedule="cosine", warmup_ratio=0.05, epochs=args.epochs, batch_size=16, seq_len=256,
                  val_fraction=0.1, eval_every=1000, retention_eval=True, seed=0,
                  precision="bf16-mixed" if args.device.startswith("cuda") else "fp32")
    if args.max_steps:
        leaves["max_steps"] = args.max_steps
    events: list = []
    t = time.perf_counter()
    result = train(RunConfig().replace(**leaves), events.append)
    if isinstance(result, RunFailed):
        raise SystemExit(f"fine-tune failed: {result.reason}")
    train_s = time.perf_counter() - t
    ret = [e for e in events if isinstance(e, RetentionMetrics)]
    run_dir = Path(result.output_dir)
    print(f"fine-tuned in {train_s:.0f} s: eval loss {result.eval.get('loss'):.4f}, retention "
          f"{ret[0].loss:.4f} -> {ret[-1].loss:.4f}", flush=True)

    bench = BenchSettings(tasks=args.tasks.split(","), include_path=[args.include_path], batch_size=16,
                          device=args.device, limit=args.limit)
    harness_error = None
    try:   # where the harness cannot be imported, say exactly why and still sweep task metric and retention
        import lm_eval.evaluator  # noqa: F401
        import lm_eval.models.huggingface  # noqa: F401
    except Exception as e:  # noqa: BLE001
        harness_error = f"{type(e).__name__}: {e}"
        print(f"lm-evaluation-harness unavailable ({harness_error}): no benchmarks", flush=True)
        bench = None
    t = time.perf_counter()
    before_after = (run_benchmarks(str(run_dir), bench, report=lambda m: print(m, flush=True)) if bench else
                    {"delta": {}, "settings": {"lm_eval_version": None, "dtype": None}, "error": harness_error})
    bench_s = time.perf_counter() - t
    t = time.perf_counter()
    sweep = sweep_alphas(run_dir, [float(a) for a in args.alphas.split(",")], bench=bench, device=args.device,
                         report=lambda m: print(m, flush=True))
    sweep_s = time.perf_counter() - t

    import torch
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    lines = [f"Model {args.model}, LR {args.lr:g}, {result.steps} steps ({train_s:.0f} s) on {args.device} ({card}); "
             f"lm-eval {before_after['settings']['lm_eval_version']}, tasks {args.tasks}, "
             f"{before_after['settings']['dtype']}", "",
             "| task | metric | base | fine-tuned | Δ |", "|---|---|---|---|---|"]
    for task, metrics in before_after["delta"].items():
        for metric, d in metrics.items():
            b = before_after["models"]["base"]["scores"][task][metric]
            f = before_after["models"]["fine_tuned"]["scores"][task][metric]
            lines.append(f"| {task} | {metric} | {b['value']:.4f} ± {b['stderr']:.4f} | {f['value']:.4f} ± "
                         f"{f['stderr']:.4f} | {d['value']:+.4f} ± {d['stderr']:.4f} |")
    keys = list(sweep["points"][0].get("benchmarks", {})) if sweep["points"] else []
    lines += ["", "| α | task eval loss | gain kept | retention loss | recovered | " + " | ".join(keys) + " |",
              "|---" * (5 + len(keys)) + "|"]
    for p in sweep["points"]:
        mark = " (chosen)" if p["alpha"] == sweep["chosen_alpha"] else ""
        kept = f"{p['task_gain_kept']:.0%}" if p.get("task_gain_kept") is not None else "-"
        rec = f"{p['retention_recovered']:.0%}" if p.get("retention_recovered") is not None else "-"
        lines.append(f"| {p['alpha']:g}{mark} | {p.get('task', float('nan')):.4f} | {kept} | "
                     f"{p.get('retention', float('nan')):.4f} | {rec} | "
                     + " | ".join(f"{p['benchmarks'][k]:.4f}" for k in keys) + " |")
    lines += ["", sweep["rule"], f"Benchmarks before/after {bench_s:.0f} s; sweep of {len(sweep['points'])} α "
                                 f"{sweep_s:.0f} s."]
    table = "\n".join(lines)
    print(table)
    (out / "interpolation.md").write_text(table + "\n", encoding="utf-8")
    (out / "interpolation.json").write_text(json.dumps({"before_after": before_after, "sweep": sweep, "card": card,
                                                        "train_seconds": train_s, "steps": result.steps,
                                                        "lr": args.lr, "eval": result.eval,
                                                        "retention_during_run": [ret[0].loss, ret[-1].loss]},
                                                       indent=2, default=str) + "\n")
    if sweep.get("plot"):
        shutil.copy(sweep["plot"], out / "interpolation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
