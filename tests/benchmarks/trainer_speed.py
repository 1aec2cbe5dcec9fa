"""Tokens/s and peak memory of ``Trainer.run()`` itself — data file parsed and packed, the real loop, metrics,
events — on a random-weight model of a public shape, for presets / option sets. Complements throughput.py,
which times the same step on synthetic batches against HF Trainer.

    python tests/benchmarks/trainer_speed.py --shape llama3.2-1b --batch 4 --seq 2048 --steps 30 \\
        --run "mixed-compiled:precision=bf16-mixed,compile=1,loss=full" --run "fastest:preset=fastest,compile=1" [--out DIR]

A run's spec may set doc_words=N (its own data: documents of N words; e.g. longer than --seq for full unpacked
rows). One JSON line per run: median tokens/s over the steps after the first 5 (the trainer's own StepMetrics), MFU,
the largest allocator peak a MemorySnapshot reported, and the first step's wall time (compilation).
The tokenizer is tests/tiny.py's word-level one (the text is random words of its vocabulary); only speed and
memory are measured, and those do not depend on which token ids the rows hold.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def make_model(shape: str, folder: Path) -> Path:
    os.environ.setdefault("FTS_BENCH_DEVICE", "cpu")           # build and save on the CPU; the trainer loads it
    import torch
    from throughput import build
    from tiny import make_tokenizer

    t = time.perf_counter()
    model = build(shape, torch.float32)
    tok = make_tokenizer()
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    print(f"built and saved {shape} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return folder


def make_data(path: Path, tokens: int, words_per_doc: int = 1500) -> Path:
    from tiny import WORDS
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(tokens // words_per_doc + 8):
            fh.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words_per_doc))}) + "\n")
    return path


def run_one(name: str, spec: str, model: Path, data: Path, out: Path, batch: int, seq: int, steps: int,
            device: str = "cuda") -> dict:
    from ftstudio.core.config import RunConfig
    from ftstudio.core.events import MemorySnapshot, RunFailed, StepMetrics
    from ftstudio.core.presets import apply_preset
    from ftstudio.engine.train.mfu import device_name, mfu, peak_tflops, step_flops
    from ftstudio.engine import run as train

    leaves = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
    preset = leaves.pop("preset", None)
    if "doc_words" in leaves:                  # this run's own data: documents of that many words
        data = make_data(out.parent / f"data-{name}.jsonl", batch * seq * (steps + 4), int(leaves.pop("doc_words")))
    cfg = RunConfig().replace(source=str(model), dataset=str(data), output=str(out), run_name=name, device=device,
                              batch_size=batch, seq_len=seq, max_steps=steps, val_fraction=0.0, packing=True,
                              log_every=1, memory_snapshot_every=5, checkpoint_every=0, export=False)
    if preset:
        cfg = apply_preset(cfg, preset)
    cfg = cfg.replace(**{k: _value(v) for k, v in leaves.items()})
    events: list = []
    t = time.perf_counter()
    result = train(cfg, events.append)
    if isinstance(result, RunFailed):
        return {"name": name, "spec": spec, "failed": result.reason}
    steps_ev = [e for e in events if isinstance(e, StepMetrics)]
    tps = sorted(e.tokens_per_s for e in steps_ev[5:])
    med = tps[len(tps) // 2] if tps else float("nan")
    peaks = [e.allocated_peak for e in events if isinstance(e, MemorySnapshot) and e.allocated_peak]
    from transformers import AutoConfig

    from ftstudio.engine.memory import load_shape
    mc = AutoConfig.from_pretrained(model)
    n = load_shape(str(model))[0].params
    flops_per_s = step_flops(n, mc.num_hidden_layers, mc.hidden_size, seq, 1) * med
    return {"name": name, "spec": spec, "tokens_per_s": med, "mfu": mfu(flops_per_s, 1.0, peak_tflops(device_name(device))), "card": device_name(device),
            "peak_alloc_gb": max(peaks) / 1e9 if peaks else None, "first_step_s": steps_ev[0].elapsed_s if steps_ev else None,
            "steps": len(steps_ev), "wall_s": round(time.perf_counter() - t, 1),
            "losses": [round(e.loss, 4) for e in steps_ev]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--run", action="append", required=True, help="NAME:key=value,... (preset=NAME allowed)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script, not a benchmark")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trainer-speed-"))
    model = make_model(args.shape, work / "model")
    data = make_data(work / "data.jsonl", args.batch * args.seq * (args.steps + 4))
    for item in args.run:
        name, _, spec = item.partition(":")
        line = run_one(name, spec, model, data, work / "runs", args.batch, args.seq, args.steps,
                       args.device)
        line.update(shape=args.shape, batch=args.batch, seq=args.seq)
        print(json.dumps(line), flush=True)
        if args.out:
            with open(Path(args.out) / "trainer_speed.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
