"""Catastrophic forgetting, measured: fine-tune SmolLM2-135M-Instruct on the legal-clause task (as
prompt → completion) under the seed's remedies, and report task loss against general-text perplexity.

    python tests/benchmarks/forgetting.py --model SmolLM2-135M-Instruct.Q4_1.gguf [--device cuda] [--out results.md]

The GGUF is de-quantised once into an HF folder (fp32), then every configuration starts from the same θ0
through the real engine (ftstudio.engine.run). General perplexity is on the bundled general-text
set (resources/general), before training and after. Rows (d)–(g) apply each remedy on top of (b), the
10× learning rate, where forgetting is large enough for a remedy to show.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ftstudio.core.config import RunConfig  # noqa: E402
from ftstudio.core.events import DriftMetrics, EvalMetrics, RetentionMetrics, RunFailed  # noqa: E402

SEED_DEFAULTS = dict(lr=2e-5, schedule="cosine", warmup_ratio=0.05, epochs=2.0)
CONFIGS = [
    ("(a) the seed's defaults (LR 2e-5, cosine, 5 % warmup, 2 epochs)", {}),
    ("(b) 10× higher LR (2e-4)", dict(lr=2e-4)),
    ("(c) 3× the epochs (6)", dict(epochs=6.0)),
    ("(d) (b) + 10 % data mixing", dict(lr=2e-4, mix_fraction=0.1)),
    ("(e) (b) + L2-SP λ=1", dict(lr=2e-4, l2sp=1.0)),
    ("(f) (b) + EWC λ=1", dict(lr=2e-4, ewc=1.0, ewc_batches=16)),
    ("(g) (b) + ξ = 2.6 layer-wise LR", dict(lr=2e-4, layer_lr_decay=2.6)),
]


def task_data(path: Path) -> Path:
    from ftstudio.engine.data import demo_dataset_path

    with open(demo_dataset_path(), encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            dst.write(json.dumps({"prompt": f"Classify this contract clause.\nClause: {row['text']}\nType:",
                                  "completion": " " + row["label"].replace("_", " ")}) + "\n")
    return path


def dequantise(gguf: Path, out: Path) -> Path:
    from ftstudio.core.config import ModelConfig
    from ftstudio.engine.models import load_model

    t = time.perf_counter()
    loaded = load_model(ModelConfig(source=str(gguf)), task="causal-lm")
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    print(f"de-quantised {gguf.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def run_one(model: Path, data: Path, out: Path, device: str, overrides: dict, name: str,
            max_steps: int | None = None) -> dict:
    from ftstudio.engine import run as train

    leaves = dict(source=str(model), dataset=str(data), output=str(out), run_name=name, device=device,
                  batch_size=16, seq_len=192, val_fraction=0.1, eval_every=1000, retention_eval=True,
                  drift_every=1000, seed=0, precision="bf16-mixed" if device.startswith("cuda") else "fp32")
    leaves.update(SEED_DEFAULTS)
    leaves.update(overrides)
    if max_steps:
        leaves["max_steps"] = max_steps
    events = []
    t = time.perf_counter()
    result = train(RunConfig().replace(**leaves), events.append)
    if isinstance(result, RunFailed):
        raise SystemExit(f"{name} failed: {result.reason}")
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    ret = [e for e in events if isinstance(e, RetentionMetrics)]
    drift = [e for e in events if isinstance(e, DriftMetrics)]
    return {"task_loss": evals[-1].loss, "general_ppl_before": ret[0].perplexity, "general_ppl_after": ret[-1].perplexity,
            "drift": drift[-1].total if drift else None, "steps": result.steps, "seconds": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct GGUF file or an HF folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="write the markdown table here")
    ap.add_argument("--smoke", action="store_true", help="2 steps of the first configuration (checks the pipeline)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forgetting-"))
    model = Path(args.model)
    if model.suffix == ".gguf":
        model = dequantise(model, work / "model")
    data = task_data(work / "clauses.jsonl")
    rows = []
    for i, (label, overrides) in enumerate(CONFIGS[:1] if args.smoke else CONFIGS):
        r = run_one(model, data, work / "runs", args.device, overrides, f"cfg{i}", 2 if args.smoke else None)
        rows.append((label, r))
        print(json.dumps({"config": label, **r}), flush=True)
    lines = ["| configuration | steps | task val loss | general ppl before → after | change | drift ‖θ−θ0‖/‖θ0‖ |",
             "|---|---|---|---|---|---|"]
    for label, r in rows:
        change = 100 * (r["general_ppl_after"] / r["general_ppl_before"] - 1)
        drift = f"{r['drift']:.2e}" if r["drift"] is not None else "-"
        lines.append(f"| {label} | {r['steps']} | {r['task_loss']:.3f} | {r['general_ppl_before']:.2f} → "
                     f"{r['general_ppl_after']:.2f} | {change:+.1f} % | {drift} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
