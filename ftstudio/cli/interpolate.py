"""`ftstudio interpolate RUN --alpha A [-o DIR]`: θ(α) = (1−α)·θ0 + α·θ* as a model folder transformers loads as
is; `--alphas 0,0.25,0.5,0.75,1`: the sweep (task metric, retention, optionally benchmarks) and a chosen α."""
from __future__ import annotations

import argparse
import json


def _alphas(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers in [0, 1] separated by commas") from None


def add_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="the weights between a run's base model and its fine-tune: write one, "
                                           "or sweep α against task metric and retention",
                       description="θ(α) = (1−α)·θ0 + α·θ* (WiSE-FT): α = 0 is the base model, α = 1 the fine-tuned "
                                   "one; values between keep much of the task gain and take back much of the "
                                   "forgetting. --alpha writes θ(α) (streamed tensor by tensor: one output shard in "
                                   "host memory, no GPU). --alphas scores each α on the run's validation split and "
                                   "on retention (general text), chooses α by the rule (the largest α whose "
                                   "retention loss stays within --retention-budget of the base model's; default: "
                                   "half of what the fine-tune added) and writes it with -o.")
    p.add_argument("run", metavar="RUN", help="a finished run folder (config.yaml and final/)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--alpha", type=float, help="write θ(α) for this α in [0, 1]")
    g.add_argument("--alphas", type=_alphas, metavar="0,0.25,...", help="sweep these α and choose one")
    g.add_argument("--sweep", dest="alphas", action="store_const", const=[i / 10 for i in range(11)],
                   help="sweep α = 0, 0.1, ..., 1 and choose one")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="the model folder to write (default RUN/interpolated/alpha-A); with --alphas, θ(α) is "
                        "written only when -o is given")
    p.add_argument("--retention-budget", type=float, metavar="NATS",
                   help="largest retention-loss increase over the base model to allow (default: half the "
                        "fine-tune's increase)")
    p.add_argument("--tasks", metavar="T1,T2", help="with --alphas: also score each α on these harness tasks")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR", help="task YAML folder (--tasks)")
    p.add_argument("--limit", type=float, help="with --tasks: documents per task")
    p.add_argument("--device", default="auto", help="cuda, cpu (default: a GPU when torch sees one)")
    p.add_argument("--shard-size", type=float, default=2.0, metavar="GB",
                   help="largest output shard (default 2 GB): the host memory the write needs")
    p.add_argument("--json", action="store_true", help="print the result as the last line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.errors import ConfigError

    from .console_tables import err_console, sweep_table

    console = err_console()
    if args.shard_size <= 0:
        raise ConfigError("--shard-size", f"{args.shard_size:g} must be more than 0 GB")
    shard_bytes = int(args.shard_size * 1024 ** 3)
    if args.alpha is not None:
        from ftstudio.engine.forgetting.interpolate import write_interpolated

        if args.tasks:
            raise ConfigError("--tasks", "benchmarks go with --alphas (the sweep); to score one written folder "
                                         "use ftstudio eval DIR --tasks ...")
        result = write_interpolated(args.run, args.alpha, args.output, max_shard_bytes=shard_bytes)
        for note in result["notes"]:
            console.print(f"note: {note}", style="yellow", markup=False, soft_wrap=True)
        console.print(f"θ(α={result['alpha']:g}) written to {result['output']} ({result['tensors']} tensors, "
                      f"{result['shards']} shard(s)); transformers loads it as is", markup=False, soft_wrap=True)
        if args.json:
            print(json.dumps(result, default=str))
        return 0
    from ftstudio.engine.alpha_sweep import sweep_alphas

    bench = None
    if args.tasks:
        from ftstudio.engine.benchmarks import BenchSettings

        bench = BenchSettings(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                              include_path=list(args.include_path),
                              limit=int(args.limit) if args.limit and args.limit >= 1 else args.limit)
    record = sweep_alphas(args.run, args.alphas, budget=args.retention_budget, bench=bench, device=args.device,
                          report=lambda m: console.print(m, style="dim", markup=False, soft_wrap=True))
    for note in record["notes"]:
        console.print(f"note: {note}", style="yellow", markup=False, soft_wrap=True)
    console.print(sweep_table(record))
    console.print(record["rule"], markup=False, soft_wrap=True)
    chosen = record.get("chosen") or {}
    if record["chosen_alpha"] is not None and chosen.get("task_gain_kept") is not None \
            and chosen.get("retention_recovered") is not None:
        console.print(f"At α = {record['chosen_alpha']:g}: {chosen['task_gain_kept']:.0%} of the task gain kept, "
                      f"{chosen['retention_recovered']:.0%} of the retention loss taken back.", markup=False)
    console.print(f"Recorded in {record.get('saved_to')}" + (f"; curve {record['plot']}" if record.get("plot") else ""),
                  markup=False, soft_wrap=True)
    if args.output and record["chosen_alpha"] is not None:
        from ftstudio.engine.forgetting.interpolate import write_interpolated

        written = write_interpolated(args.run, record["chosen_alpha"], args.output, max_shard_bytes=shard_bytes)
        record["written"] = written["output"]
        console.print(f"θ(α={record['chosen_alpha']:g}) written to {written['output']}", markup=False)
    elif record["chosen_alpha"] is not None:
        console.print(f"Write it: ftstudio interpolate {args.run} --alpha {record['chosen_alpha']:g} -o DIR",
                      markup=False, soft_wrap=True)
    if args.json:
        print(json.dumps(record, default=str))
    return 0
