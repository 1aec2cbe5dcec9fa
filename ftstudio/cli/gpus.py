"""`ftstudio gpus [--json]`: the GPUs NVML sees (or a plain "no NVIDIA GPU"), and the CPU and RAM."""
from __future__ import annotations

import argparse
import dataclasses
import json


def add_parser(sub) -> None:
    p = sub.add_parser("gpus", help="list GPUs (NVML), CPU and RAM")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.engine.hardware import cpu_info, gpu_status_message, list_gpus

    gpus = list_gpus()
    cpu = cpu_info()
    if args.json:
        print(json.dumps({"gpus": [dataclasses.asdict(g) for g in gpus], "cpu": dataclasses.asdict(cpu),
                          "message": gpu_status_message()}, default=str))
        return 0
    if not gpus:
        print(gpu_status_message())
    for g in gpus:
        print(f"GPU {g.index}: {g.name}, {g.used_bytes / 1e9:.1f} / {g.total_bytes / 1e9:.1f} GB used, "
              f"{g.utilization}% busy, {g.temperature} °C")
    print(f"CPU: {cpu.name}, {cpu.physical_cores} cores ({cpu.logical_cores} threads), "
          f"{cpu.ram_available_bytes / 1e9:.1f} of {cpu.ram_total_bytes / 1e9:.1f} GB RAM free")
    return 0
