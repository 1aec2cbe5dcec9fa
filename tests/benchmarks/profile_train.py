"""Where a step of `ftstudio train` spends its GPU time, and how long the GPU waits on the host.

    python tests/benchmarks/profile_train.py [--wait 12] [--active 4] [--out DIR] -- train --model M --dataset D ...

Runs the CLI in this process under torch.profiler: the profiler steps with every optimizer step (a global
optimizer step hook, so the trainer is not touched), skips --wait steps (compile, warm-up) and records
--active steps. Prints the kernels by GPU time (grouped: attention, matmul, optimizer, loss, other), the
share of the recorded wall time with no kernel running (host stalls), the gaps over 0.5 ms with the CPU
call that ran during the largest ones, and writes the chrome trace (gzip) under --out.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1])]

GROUPS = (("attention", ("flash", "fmha", "cudnn", "attention", "flex", "triton_tem_fused")),
          ("matmul", ("gemm", "sm90", "sm100", "cutlass", "nvjet", "xmma", "cublas")),
          ("optimizer", ("adamw", "_adamw")),
          ("loss", ("cross_entropy", "log_softmax", "nll")))


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def analyse(trace: dict, active: int) -> dict:
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = sorted((e for e in ev if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    if not kernels:
        return {"error": "no kernels recorded"}
    t0, t1 = kernels[0]["ts"], max(k["ts"] + k["dur"] for k in kernels)
    busy, end, gaps = 0.0, t0, []
    for k in kernels:
        start, stop = k["ts"], k["ts"] + k["dur"]
        if start > end:
            gaps.append((start - end, end))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    by_name: dict[str, float] = {}
    for k in kernels:
        by_name[k["name"]] = by_name.get(k["name"], 0.0) + k["dur"]
    groups: dict[str, float] = {}
    for name, us in by_name.items():
        groups[group_of(name)] = groups.get(group_of(name), 0.0) + us
    cpu = [e for e in ev if e.get("cat") in ("python_function", "cpu_op", "user_annotation")]
    big = sorted(gaps, reverse=True)[:8]
    where = []
    for gap, at in big:
        during = [e["name"] for e in cpu if e["ts"] <= at + gap / 2 <= e["ts"] + e["dur"]]
        where.append({"gap_ms": round(gap / 1e3, 2), "cpu": [n[:90] for n in during[-4:]]})
    wall = t1 - t0
    return {"steps": active, "wall_ms_per_step": round(wall / active / 1e3, 2),
            "gpu_busy_share": round(busy / wall, 4),
            "idle_ms_per_step": round((wall - busy) / active / 1e3, 2),
            "gaps_over_0.5ms_per_step": round(sum(1 for g, _ in gaps if g > 500) / active, 1),
            "groups_ms_per_step": {g: round(us / active / 1e3, 2) for g, us in sorted(groups.items(),
                                                                                      key=lambda x: -x[1])},
            "top_kernels_ms_per_step": [(n[:100], round(us / active / 1e3, 3)) for n, us in
                                        sorted(by_name.items(), key=lambda x: -x[1])[:25]],
            "largest_gaps": where}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait", type=int, default=12)
    ap.add_argument("--active", type=int, default=4)
    ap.add_argument("--out", default="/tmp/profile-train")
    ap.add_argument("--label", default="run")
    ap.add_argument("cli", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cli = a.cli[1:] if a.cli[:1] == ["--"] else a.cli
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    done = {}

    def ready(prof) -> None:
        path = out / f"{a.label}.trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
        with gzip.open(str(path) + ".gz", "wt") as f:
            json.dump(trace, f)
        path.unlink()
        done["result"] = {"label": a.label, **analyse(trace, a.active)}
        print("PROFILE " + json.dumps(done["result"]), flush=True)

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=False,
                   schedule=schedule(wait=a.wait, warmup=1, active=a.active, repeat=1), on_trace_ready=ready)
    prof.start()
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: prof.step())
    from ftstudio.entry import main as cli_main

    try:
        rc = cli_main(cli)
    finally:
        prof.stop()
    (out / f"{a.label}.json").write_text(json.dumps(done.get("result", {"error": "too few steps"}), indent=1))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
