"""Do the fast presets train like the reference? SmolLM2-135M-Instruct on the legal-clause task (prompt →
completion), 200 steps each, same data order; prints one JSON line per run (the per-step losses) as soon as it
ends, then a comparison of 20-step moving averages.

    python tests/benchmarks/preset_parity.py --model SmolLM2-135M-Instruct.Q4_1.gguf [--steps 200] [--out DIR]

Runs, in order: Reference (the seed's 16N recipe) seed 0, Fastest without packing, Fastest as the preset is (packed
rows), Largest model that fits, then Reference seed 1 (run-to-run noise: the yardstick).
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
sys.path.insert(0, str(Path(__file__).parent))

from forgetting import dequantise, task_data  # noqa: E402

from ftstudio.core.config import RunConfig  # noqa: E402
from ftstudio.core.events import RunFailed, StepMetrics  # noqa: E402
from ftstudio.core.presets import apply_preset  # noqa: E402

REF = "Reference (the seed's 16N recipe)"
# (preset, seed, overrides). "Fastest" packs rows, so its steps hold other examples than the reference's:
# the run without packing isolates the numerics (pure bf16 + Kahan AdamW, compile, fused loss).
RUNS = [(REF, 0, {}), ("Fastest", 0, {"packing": False}), ("Fastest", 0, {}),
        ("Largest model that fits", 0, {}), (REF, 1, {})]


def moving(xs: list[float], w: int = 20) -> list[float]:
    return [sum(xs[max(0, i - w + 1):i + 1]) / len(xs[max(0, i - w + 1):i + 1]) for i in range(len(xs))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from ftstudio.engine import run as train

    work = Path(tempfile.mkdtemp(prefix="parity-"))
    model = Path(args.model)
    if model.suffix == ".gguf":
        model = dequantise(model, work / "model")
    data = task_data(work / "clauses.jsonl")
    curves = {}
    for i, (preset, seed, overrides) in enumerate(RUNS):
        cfg = apply_preset(RunConfig().replace(
            source=str(model), dataset=str(data), output=str(work / "runs"), device=args.device, batch_size=16,
            seq_len=128, max_steps=args.steps, val_fraction=0.0, lr=5e-5, seed=seed, warmup_ratio=0.05,
            run_name=f"{i}-{preset.split()[0].lower()}-seed{seed}"), preset).replace(**overrides)
        label = preset + "".join(f" {k}={v}" for k, v in overrides.items())
        events: list = []
        t = time.perf_counter()
        result = train(cfg, events.append)
        if isinstance(result, RunFailed):
            print(json.dumps({"preset": label, "seed": seed, "failed": result.reason}), flush=True)
            continue
        losses = [e.loss for e in events if isinstance(e, StepMetrics)]
        tps = [e.tokens_per_s for e in events if isinstance(e, StepMetrics)][5:]
        curves[(label, seed)] = losses
        line = {"preset": label, "seed": seed, "seconds": time.perf_counter() - t, "losses": losses,
                "median_tokens_per_s": sorted(tps)[len(tps) // 2] if tps else None}
        print(json.dumps(line), flush=True)
        if args.out:
            with open(Path(args.out) / "preset_parity.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
    ref = curves.get((REF, 0))
    for key, losses in curves.items():
        if ref is None or key == (REF, 0):
            continue
        a, b = moving(ref), moving(losses)
        n = min(len(a), len(b))
        gap = max(abs(x - y) for x, y in zip(a[10:n], b[10:n])) if n > 10 else float("nan")
        print(f"{key[0]} seed {key[1]} vs reference seed 0: max |Δ| of 20-step moving averages {gap:.4f}; "
              f"last-50 mean {sum(losses[-50:]) / len(losses[-50:]):.4f} vs {sum(ref[-50:]) / len(ref[-50:]):.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
