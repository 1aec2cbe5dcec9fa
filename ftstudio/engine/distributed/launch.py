"""The supervisor of a multi-GPU run, and the cluster launch script.

:func:`run_distributed` is what ``engine.run`` calls when several GPUs are ticked. It writes the
config to a temporary YAML, starts ``torchrun --standalone --nproc-per-node N -m ftstudio.engine.distributed``
as a subprocess (``CUDA_VISIBLE_DEVICES`` = the ticked GPUs), turns rank 0's JSON lines back into events for
the caller's reporter (the GUI worker or the console see exactly what a one-GPU run reports), forwards
stop / pause / save-now through a control file, and ends with a clear ``RunFailed`` (exit code and the last
lines of stderr) when a rank dies — it never waits on a dead group: torchrun tears the group down when one
rank exits non-zero, and the supervisor only waits on the torchrun process.

:func:`launch_script` writes the same run for a cluster: a multi-node ``torchrun`` command, optionally under
a SLURM batch header. No home-made distribution layer: torchrun's rendezvous does the rest.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.events import (Event, LogLine, Reporter, RunFailed, RunFinished, RunStarted,
                                  event_from_dict)

CONTROL_ENV = "FTSTUDIO_CONTROL"     # where the ranks find the control file (stop / pause / save now)
RANK_FAILED = "FTSTUDIO_RANK_FAILED "   # prefix of a non-zero rank's failure line on stderr
STOP_GRACE_S = 120.0       # after a stop request, how long the ranks get to checkpoint and exit
STDERR_TAIL = 40


def torchrun_command(config_path: str | Path, nproc: int, *, resume_from: str | Path | None = None) -> list[str]:
    """The single-node command; ``python -m torch.distributed.run`` is torchrun without relying on PATH."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "ftstudio.engine.distributed", str(config_path)]
    if resume_from:
        cmd += ["--resume", str(resume_from)]
    return cmd


def _child_env(config: RunConfig, control_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[CONTROL_ENV] = str(control_path)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")   # N ranks × all cores would oversubscribe the CPU
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    if config.hardware.device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in config.hardware.gpus)
    return env


class _ControlFile:
    """Writes the Control's requests where rank 0 reads them each step (atomic rename: never half a file)."""

    def __init__(self, path: Path):
        self.path, self.saves, self._last = path, 0, None
        self.write(stop=False, pause=False)

    def write(self, *, stop: bool, pause: bool) -> None:
        state = {"stop": stop, "pause": pause, "save": self.saves}
        if state == self._last:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.path)
        self._last = state


def _pump(stream, out: queue.Queue, tag: str) -> None:
    for line in iter(stream.readline, ""):
        out.put((tag, line.rstrip("\n")))
    out.put((tag, None))


def _parse_line(line: str) -> Event | None:
    if line.startswith("{"):
        try:
            d = json.loads(line)
            if isinstance(d, dict) and "event" in d:
                return event_from_dict(d)
        except (ValueError, KeyError, TypeError):
            pass
    return LogLine(line) if line.strip() else None


def _kill_group(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, sig)
        else:
            proc.terminate()
    except (ProcessLookupError, PermissionError):
        pass


def run_distributed(config: RunConfig, reporter: Reporter | None = None, control: Control | None = None,
                    *, resume_from: str | Path | None = None, nproc: int | None = None,
                    timeout_s: float | None = None) -> RunFinished | RunFailed:
    """Run ``config`` over ``len(config.hardware.gpus)`` processes with FSDP2 and supervise them.

    Returns the run's final event (also handed to ``reporter``). ``timeout_s`` ends a run that takes longer
    (a safety net for tests and batch jobs; None = no limit).
    """
    report = reporter or (lambda e: None)
    control = control or Control()
    nproc = nproc or len(config.hardware.gpus)
    with tempfile.TemporaryDirectory(prefix="ftstudio-launch-") as tmp:
        cfg_path, ctl_path = Path(tmp) / "run_config.yaml", Path(tmp) / "control.json"
        config.save(cfg_path)
        ctl = _ControlFile(ctl_path)
        cmd = torchrun_command(cfg_path, nproc, resume_from=resume_from)
        report(LogLine(f"Starting {nproc} processes: {shlex.join(cmd[2:])}"))
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                    env=_child_env(config, ctl_path), start_new_session=(os.name == "posix"))
        except OSError as e:
            event = RunFailed(reason=f"could not start torchrun: {e}", error_type="LaunchError")
            report(event)
            return event
        from ftstudio.core.control import forget_quit_hook, on_quit_now
        hook = on_quit_now(lambda: _kill_group(proc, signal.SIGKILL))   # a second Ctrl-C/SIGTERM leaves no rank behind
        try:
            return _supervise(proc, ctl, control, report, timeout_s)
        finally:
            forget_quit_hook(hook)


def _supervise(proc, ctl: _ControlFile, control: Control, report: Reporter,
               timeout_s: float | None) -> RunFinished | RunFailed:
    lines: queue.Queue = queue.Queue()
    for stream, tag in ((proc.stdout, "out"), (proc.stderr, "err")):
        threading.Thread(target=_pump, args=(stream, lines, tag), daemon=True).start()
    stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    rank_failure: dict | None = None
    final: Event | None = None
    run_dir, last_step = "", 0
    t0, stop_at = time.monotonic(), None
    open_streams = 2
    while open_streams or proc.poll() is None:
        try:
            tag, line = lines.get(timeout=0.2)
        except queue.Empty:
            tag, line = None, None
        if tag is not None and line is None:
            open_streams -= 1
        elif tag == "out":
            event = _parse_line(line)
            if isinstance(event, RunStarted):
                run_dir = event.run_dir
            last_step = getattr(event, "step", last_step) or last_step
            if isinstance(event, (RunFinished, RunFailed)):
                final = event          # reported once torchrun has exited (see _conclude)
            elif event is not None:
                report(event)
        elif tag == "err":
            if line.startswith(RANK_FAILED):
                try:
                    rank_failure = json.loads(line[len(RANK_FAILED):])
                except ValueError:
                    pass
            stderr_tail.append(line)
        # Requests from the GUI / console: relay them, escalate a stop that is not honoured in time.
        if control.take_save_request():
            ctl.saves += 1
        ctl.write(stop=control.stop_requested, pause=control.paused)
        now = time.monotonic()
        if control.stop_requested and stop_at is None:
            stop_at = now
        if proc.poll() is None and ((stop_at is not None and now - stop_at > STOP_GRACE_S)
                                    or (timeout_s is not None and now - t0 > timeout_s)):
            why = "did not stop in time" if stop_at is not None else f"ran past its {timeout_s:.0f} s limit"
            report(LogLine(f"The run {why}: terminating its processes", "warning"))
            _terminate(proc)
            stderr_tail.append(f"[ftstudio] terminated: the run {why}")
    code = proc.wait()
    return _conclude(final, code, rank_failure, list(stderr_tail), run_dir, last_step, report)


def _terminate(proc, grace_s: float = 15.0) -> None:
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)


def _root_cause(tail: list[str]) -> tuple[int | None, int | None]:
    """(rank, exit code) of the first failed worker, from torchrun's 'Root Cause' report on stderr."""
    rank = code = None
    for line in tail:
        m = re.match(r"\s*rank\s*:\s*(\d+)", line)
        if m:
            rank, code = int(m.group(1)), None
        m = re.match(r"\s*exitcode\s*:\s*(-?\d+)", line)
        if m and rank is not None and code is None:
            code = int(m.group(1))
    return rank, code


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _conclude(final: Event | None, code: int, rank_failure: dict | None, tail: list[str], run_dir: str,
              step: int, report: Reporter) -> RunFinished | RunFailed:
    """The one final event of the run. Rank 0's own RunFinished / RunFailed is held back until torchrun
    exits: when another rank died first, rank 0 only saw a broken connection, and the cause is the other rank."""
    if code == 0 and final is not None:
        report(final)
        return final
    dead_rank, dead_code = _root_cause(tail)
    useful = [ln for ln in tail if ln.strip() and not ln.startswith(RANK_FAILED.strip())][-15:]
    if rank_failure and (final is None or dead_rank == rank_failure.get("rank")):
        event = RunFailed(reason=f"rank {rank_failure.get('rank')} failed: {rank_failure.get('reason', '?')}",
                          advice=rank_failure.get("advice", ""),
                          error_type=rank_failure.get("error_type") or "RankFailed", step=step, output_dir=run_dir)
    elif dead_rank not in (None, 0) and dead_code not in (None, 1):
        # rank 0's own failure (if any) was a symptom: a peer vanished under a collective
        if isinstance(final, RunFailed):
            report(LogLine(f"rank 0 then failed: {final.reason}", "warning"))
        event = RunFailed(reason=f"training process rank {dead_rank} died ({_describe_exit(dead_code)}) at step "
                                 f"{step + 1}; the other ranks were stopped",
                          advice="a rank killed by the system is often out of host memory; check the machine's "
                                 "log (dmesg) and lower batch_size or seq_len", error_type="RankDied",
                          step=step, output_dir=run_dir)
    elif isinstance(final, RunFailed):
        report(final)
        return final
    else:
        event = RunFailed(reason=f"the training processes ended ({_describe_exit(code)}) before the run finished",
                          advice="see the last lines of their error output in the log", error_type="RankDied",
                          step=step, output_dir=run_dir)
    if useful:
        report(LogLine("Last lines from the training processes:\n" + "\n".join(useful), "error"))
    report(event)
    return event


# -- clusters ------------------------------------------------------------------------------------------

def launch_script(config_path: str | Path, nodes: int = 1, gpus_per_node: int = 8, slurm: bool = False) -> str:
    """A shell script that runs ``config_path`` on ``nodes`` × ``gpus_per_node`` GPUs with torchrun.

    With ``slurm`` it is an ``sbatch`` script: SLURM picks the nodes, the first one hosts the rendezvous, and
    ``srun`` starts one torchrun per node. Without, run it on every node with NODE_RANK and MASTER_ADDR set.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError("nodes and gpus_per_node must be at least 1")
    bad = sorted({c for c in str(config_path) if ord(c) < 32 or ord(c) == 127})
    if bad:   # a newline in a name would end the script's line: what follows would run as a command
        from ftstudio.core.errors import ConfigError
        raise ConfigError("config", f"the path {str(config_path)!r} holds a control character "
                                    f"({', '.join(repr(c) for c in bad)}); rename the file, then write the script")
    cfg = shlex.quote(str(config_path))
    run = f"-m ftstudio.engine.distributed {cfg}"
    lines = ["#!/bin/bash"]
    if slurm:
        lines += ["#SBATCH --job-name=ftstudio", f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
                  f"#SBATCH --gpus-per-node={gpus_per_node}", f"#SBATCH --cpus-per-task={8 * gpus_per_node}",
                  "#SBATCH --exclusive", "#SBATCH --output=ftstudio-%j.log", ""]
    lines += [f"# FT Studio: full fine-tune of {cfg} on {nodes} node(s) x {gpus_per_node} GPU(s) with FSDP2.",
              "# Every node needs the same Python environment (pip install ftstudio) and the model, data and",
              "# output folder on a shared filesystem. Resume: add `--resume RUN_DIR` after the config.",
              "set -euo pipefail", ""]
    if slurm:
        lines += ['MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "MASTER_PORT=${MASTER_PORT:-29500}", "",
                  f"srun torchrun --nnodes={nodes} --nproc-per-node={gpus_per_node} \\",
                  '    --rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \\',
                  f"    {run}"]
    elif nodes == 1:
        lines += [f"torchrun --standalone --nproc-per-node={gpus_per_node} {run}"]
    else:
        lines += [": \"${MASTER_ADDR:?set MASTER_ADDR to the first node's address}\"",
                  ": \"${NODE_RANK:?set NODE_RANK to this node's index (0..%d)}\"" % (nodes - 1),
                  "MASTER_PORT=${MASTER_PORT:-29500}", "",
                  f"torchrun --nnodes={nodes} --node-rank=\"$NODE_RANK\" --nproc-per-node={gpus_per_node} \\",
                  '    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" \\',
                  f"    {run}"]
    return "\n".join(lines) + "\n"
