"""`ftstudio check-data DATASET... [--model M] [--format F] [--json]`: validate and describe datasets as the
model will see them; one clean line per problem (each names its file); exit 1 when any has errors."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    from ftstudio.core.config import FORMATS, TASKS

    p = sub.add_parser("check-data", help="validate a dataset and count its tokens")
    p.add_argument("dataset", nargs="+", help="a .jsonl/.json/.csv/.tsv/.parquet/.txt file (or .gz/.bz2/.xz/.zst "
                                           "of one), a datasets folder, or 'demo'; several are checked one by one")
    p.add_argument("--model", default=None, help="tokenize with this model's tokenizer (default: the demo model's)")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--task", choices=TASKS, default="auto")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--instruction-format", choices=("auto", "chat-template", "text"), default="auto",
                   help="how alpaca and prompt/completion rows reach the model (see `ftstudio train --help`)")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print the first N rows as the model sees them, the trained tokens marked [[like this]]")
    p.add_argument("--json", action="store_true", help="print the report as JSON on the last line of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.config import DataConfig, ModelConfig
    from ftstudio.core.errors import FTStudioError
    from ftstudio.engine import models as models_mod

    from . import fail

    datasets = args.dataset if isinstance(args.dataset, list) else [args.dataset]
    try:
        kw = {"format": args.format, "text_column": args.text_column,
              "label_column": args.label_column, "instruction_format": args.instruction_format}
        if args.seq_len is not None:
            kw["seq_len"] = args.seq_len
        if args.val_fraction is not None:
            kw["val_fraction"] = args.val_fraction
        cfgs = [DataConfig(dataset=d, **kw) for d in datasets]
        model_cfg = ModelConfig(source=args.model or "demo", task=args.task)
        tokenizer = models_mod.load_tokenizer(model_cfg)
    except FTStudioError as e:
        return fail(str(e))
    task = None
    if args.task != "auto":
        task = args.task
    return max(_check_one(args, cfg, tokenizer, task) for cfg in cfgs)


def _check_one(args: argparse.Namespace, cfg, tokenizer, task) -> int:
    from ftstudio.engine import data as data_mod

    report = data_mod.check_data(cfg, tokenizer, task=task, seed=args.seed)
    d = report.to_dict()
    if args.show > 0 and report.ok:
        d["preview"] = data_mod.preview(cfg, tokenizer, args.show, task=task, seed=args.seed)
    errors = [p for p in report.problems if getattr(p, "severity", "error") == "error"]
    for p in report.problems:
        print(f"{p.severity}: {p}", flush=True)
    if not args.json:
        rows = d.get("rows")
        print(f"{d.get('path')}: format {d.get('format')}, task {d.get('task')}, {rows} row{'' if rows == 1 else 's'} "
              f"({d.get('train_rows')} train / {d.get('val_rows')} validation)")
        if d.get("tokens") is not None:
            print(f"tokens {d['tokens']:,} (under the loss: {d['trainable_tokens']:,}), "
                  f"truncated rows at seq_len {cfg.seq_len}: {d.get('truncated', 0)}, "
                  f"skipped (no trained token left): {d.get('skipped', 0)}"
                  + (f"; counted with {'the demo model' if not args.model else args.model}'s tokenizer"))
        lengths = d.get("lengths") or {}
        if lengths:
            print("tokens per row: " + ", ".join(f"{k} {lengths[k]}" for k in ("min", "mean", "p50", "p95", "max")
                                                  if k in lengths))
        if d.get("label_counts"):
            total = sum(d["label_counts"].values()) or 1
            print("classes: " + ", ".join(f"{k} {n:,} ({n / total:.1%})" for k, n in d["label_counts"].items()))
        elif d.get("labels"):
            print(f"labels: {', '.join(map(str, d['labels']))}")
        if d.get("rendering"):
            print(f"rendered as: {d['rendering']}")
        if args.show > 0 and not report.ok:   # asked for, so its absence is said
            print(f"--show {args.show}: no rows shown while the file has errors; fix the rows named above first")
        for item in d.get("preview", []):
            print(f"--- row {item['row']}" + (f" ({item['side']})" if item.get("side") else "")
                  + (" (truncated at seq_len)" if item.get("truncated") else ""))
            print(item["text"] if item.get("text") is not None else f"error: {item.get('error')}")
            print(f"[trained] {item['trained']}" if item.get("trained") is not None else "")
    else:
        print(json.dumps(d, default=str))
    return 1 if errors else 0
