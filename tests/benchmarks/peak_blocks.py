"""What the CUDA caching allocator holds at a run's peak: the blocks alive at the moment of the largest allocated
total, grouped by size and by the Python frame that allocated them, for rows of plan_vs_measured.py.

    PYTHONUNBUFFERED=1 python tests/benchmarks/peak_blocks.py --rows llama-3.2-1b:checkpointed,bert-base:defaults \
        [--steps 2] [--deadline 200] --json peaks.json

Each row runs ``ftstudio train``'s engine (plan_vs_measured.measure_run) under torch's memory history
(``torch.cuda.memory._record_memory_history``, Python stacks), then replays the trace's alloc / free events to find
the peak and the blocks alive there. Only a summary is written (the snapshot itself is never saved): totals, the
blocks of 1 MiB and more grouped by (size, innermost frame of the model's or the trainer's code), the smaller ones
summed, and the events just before the peak (which op the peak happened in). Backward's allocations come from
autograd's thread and have no Python frame: they are grouped as "autograd".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MIB = 1 << 20


def where(frames: list[dict]) -> str:
    """The innermost frame of the model's, the trainer's or torch.nn's code (file:line:function)."""
    for f in frames or []:
        name = f.get("filename", "")
        if any(k in name for k in ("transformers/", "ftstudio/", "torch/nn/", "torch/optim/", "torchao/",
                                   "torch/_inductor/", "torch/utils/checkpoint")):
            short = "/".join(name.split("/")[-2:])
            return f"{short}:{f.get('line')}:{f.get('name')}"
    return "autograd" if not frames else f"{frames[0].get('filename', '?').split('/')[-1]}:{frames[0].get('name')}"


def summarise(snapshot: dict, top: int = 45) -> dict:
    trace = snapshot["device_traces"][0]
    live: dict[int, tuple[int, str]] = {}
    total = peak = 0
    peak_i = -1
    peak_live: dict[int, tuple[int, str]] = {}
    for i, e in enumerate(trace):
        a = e["action"]
        if a == "alloc":
            live[e["addr"]] = (e["size"], where(e.get("frames")))
            total += e["size"]
            if total > peak:
                peak, peak_i = total, i
                peak_live = None                     # taken lazily below: a copy at every new peak is costly
        elif a == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    # replay again up to the peak to take its live set
    live, total = {}, 0
    for e in trace[:peak_i + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = (e["size"], where(e.get("frames")))
        elif e["action"] == "free_completed":
            live.pop(e["addr"], None)
    peak_live = live
    groups: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    small = [0, 0]
    for size, w in peak_live.values():
        if size >= MIB:
            g = groups[(size, w)]
            g[0] += 1
            g[1] += size
        else:
            small[0] += 1
            small[1] += size
    rows = sorted(((s, w, n, b) for (s, w), (n, b) in groups.items()), key=lambda r: -r[3])
    before = [{"action": e["action"], "size": e["size"], "at": where(e.get("frames"))}
              for e in trace[max(0, peak_i - 25):peak_i + 1] if e["action"] in ("alloc", "free_completed")]
    after = [{"action": e["action"], "size": e["size"], "at": where(e.get("frames"))}
             for e in trace[peak_i + 1:peak_i + 12] if e["action"] in ("alloc", "free_completed")]
    return {"events": len(trace), "peak_event": peak_i, "peak_bytes": peak, "live_blocks": len(peak_live),
            "groups": [{"size": s, "at": w, "count": n, "bytes": b} for s, w, n, b in rows[:top]],
            "groups_left_out_bytes": sum(r[3] for r in rows[top:]), "small": {"count": small[0], "bytes": small[1]},
            "sizes": sorted(((s, n) for s, n in _by_size(peak_live).items()), key=lambda r: -r[0] * r[1])[:60],
            "before_peak": before, "after_peak": after}


def _by_size(live) -> dict:
    out: dict[int, int] = defaultdict(int)
    for size, _ in live.values():
        if size >= MIB:
            out[size] += 1
    return out


def main() -> int:
    import torch

    import plan_vs_measured as pvm

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True, help="shape:setting,...")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--work", default="/tmp/plan_vs_measured")
    ap.add_argument("--deadline", type=float, default=0, help="seconds: start no row after this")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    t0 = time.time()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    for item in a.rows.split(","):
        name, setting = item.split(":")
        if a.deadline and time.time() - t0 > a.deadline:
            out["rows"].append({"shape": name, "setting": setting, "status": "skipped (deadline)"})
            continue
        cfg_d, batch, seq = pvm.SHAPES[name]
        cls = cfg_d["model_type"] == "bert"
        row = {"shape": name, "setting": setting}
        try:
            model = pvm.make_model(name, work)
            data = pvm.make_data(work, seq, batch * (a.steps + 1), cls)
            cfg = pvm.config_for(name, setting, model, data, a.steps, work / "runs")
            torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
            t = time.time()
            row.update(pvm.measure_run(cfg, stop_after=a.steps if setting == "long" else None))
            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            row["summary"] = summarise(snap)
            row["wall_s"] = round(time.time() - t, 1)
            del snap
        except Exception as e:  # noqa: BLE001 - one failed row must not end the call
            torch.cuda.memory._record_memory_history(enabled=None)
            row.update(status="error", reason=f"{type(e).__name__}: {e}"[:400])
        out["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "summary"}, default=str)[:600], flush=True)
        Path(a.json).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
