"""`ftstudio launch-script CONFIG.yaml [--nodes N] [--gpus-per-node G] [--slurm] [-o FILE]`: a shell script that
runs the same config on a cluster with multi-node torchrun and FSDP2 (an sbatch script with --slurm)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("launch-script", help="write a multi-node torchrun / SLURM script that runs a config",
                       description="Print (or write) a script that trains CONFIG on a cluster: torchrun on every "
                                   "node, FSDP2 sharding over all GPUs. The config, model, data and output folder "
                                   "must be on a filesystem every node sees.")
    p.add_argument("config", metavar="CONFIG.yaml", help="the run config (saved from the app or written by hand)")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs on each machine (default 8)")
    p.add_argument("--slurm", action="store_true", help="an sbatch script with a #SBATCH header")
    p.add_argument("-o", "--output", metavar="FILE", help="write the script here (made executable) "
                                                           "instead of printing it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ftstudio.core.config import RunConfig
    from ftstudio.core.errors import ConfigError
    from ftstudio.engine.distributed import launch_script

    try:
        RunConfig.load(args.config)   # a broken config fails here, not an hour later in the queue
    except ConfigError as e:
        print(f"ftstudio: error: {e}", file=sys.stderr)
        return 2
    if args.nodes < 1 or args.gpus_per_node < 1:
        print("ftstudio: error: --nodes and --gpus-per-node must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else None
    if out is not None:  # checked before the script is built: a wrong -o is the user's to fix, in one line
        if out.is_dir():
            print(f"ftstudio: error: -o {out} is a folder; give a file name such as {out / 'job.sh'}", file=sys.stderr)
            return 2
        if not out.parent.is_dir():
            print(f"ftstudio: error: -o {out}: the folder {out.parent} does not exist; create it first",
                  file=sys.stderr)
            return 2
    try:
        script = launch_script(Path(args.config).resolve(), args.nodes, args.gpus_per_node, args.slurm)
    except ConfigError as e:   # a path that cannot be written into a script safely
        print(f"ftstudio: error: {e}", file=sys.stderr)
        return 2
    if out is None:
        sys.stdout.write(script)
        return 0
    try:
        from ftstudio.core.atomic import atomic_write_text
        atomic_write_text(out, script)   # a half-written job script is never submitted
        out.chmod(0o755)
    except OSError as e:
        print(f"ftstudio: error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {out}" + (f" (submit with: sbatch {out})" if args.slurm else ""), file=sys.stderr)
    return 0
