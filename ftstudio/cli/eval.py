"""`ftstudio eval MODEL|RUN --tasks T1,T2 [--include-path DIR] [--limit N] [--num-fewshot K]
[--apply-chat-template] [--batch-size B] [--seed S] [--json]`: lm-evaluation-harness benchmarks of a model, or of
a run's base model and fine-tuned final/ under one recorded set of settings (RUN/benchmarks/<time>.json)."""
from __future__ import annotations

import argparse
import json


def _tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give task names separated by commas, e.g. hellaswag,arc_easy")
    return names


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of documents (e.g. 100) or a fraction (0.1)") from None
    return int(value) if value >= 1 and value.is_integer() else value


def _batch(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number or 'auto'") from None


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="benchmarks (lm-evaluation-harness): a model, or a run's base vs fine-tuned",
                       description="Scores a model with lm-evaluation-harness; given a run folder, scores its base "
                                   "model and its final/ under identical settings, prints base, fine-tuned and the "
                                   "difference with standard errors, and records the scores and every setting "
                                   "(harness and task versions, few-shot, chat template, batch, limit, seed) in "
                                   "RUN/benchmarks/<time>.json. Needs pip install 'ftstudio[eval]'.")
    p.add_argument("source", metavar="MODEL|RUN", help="a run folder, a model folder, a .gguf file or a hub id")
    p.add_argument("--tasks", type=_tasks, required=True, metavar="T1,T2",
                   help="the harness's task names (e.g. hellaswag,arc_easy), or tasks of your own in a folder given "
                        "with --include-path; ftstudio_general_mc is a small bundled example")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of task YAMLs (the harness's format; local data via dataset_path: json and "
                        "data_files, relative to the YAML); repeatable")
    p.add_argument("--limit", type=_limit, help="score only the first N documents of each task (or a fraction)")
    p.add_argument("--num-fewshot", type=int, metavar="K", help="few-shot examples (default: each task's own)")
    p.add_argument("--apply-chat-template", action="store_true",
                   help="render prompts through the chat template (a run: the one it was trained with, for both)")
    p.add_argument("--batch-size", type=_batch, default=8, metavar="B|auto", help="batch size (default 8)")
    p.add_argument("--seed", type=int, default=1234, help="the harness's seeds (default 1234)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu (default: a GPU when torch sees one)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="weights' dtype while scoring (default: bfloat16 on a GPU that has it, else float32)")
    p.add_argument("-o", "--output", metavar="FILE.json",
                   help="where to write the record (default for a run: RUN/benchmarks/<time>.json)")
    p.add_argument("--json", action="store_true", help="print the whole record as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.engine.benchmarks import BenchSettings, run_benchmarks, save_record

    from .console_tables import benchmark_table, err_console

    settings = BenchSettings(tasks=args.tasks, include_path=list(args.include_path), num_fewshot=args.num_fewshot,
                             apply_chat_template=args.apply_chat_template, batch_size=args.batch_size,
                             limit=args.limit, seed=args.seed, device=args.device, dtype=args.dtype)
    console = err_console()
    record = run_benchmarks(args.source, settings, report=lambda msg: console.print(msg, style="dim", markup=False))
    path = save_record(record, args.output)
    record["saved_to"] = str(path) if path else None
    console.print(benchmark_table(record))
    s = record["settings"]
    console.print(f"lm-eval {s['lm_eval_version']}, few-shot {s['num_fewshot'] if s['num_fewshot'] is not None else 'task default'}, "
                  f"chat template {'on' if s['apply_chat_template'] else 'off'}, batch {s['batch_size']}, "
                  f"limit {s['limit'] if s['limit'] is not None else 'none'}, seed {s['seed']}, {s['device']} "
                  f"{s['dtype']}" + (f". Recorded in {path}" if path else ""), markup=False, soft_wrap=True)
    if args.json:
        print(json.dumps(record, default=str))
    return 0
