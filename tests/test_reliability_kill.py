"""Reliability through the real CLI, in subprocesses: SIGKILL at several moments (a checkpoint write
included) and --resume end with exactly the weights of a run never interrupted; the demo trains with
every socket blocked; a secret in the environment never reaches the logs.

The kill-during-write moment is made wide by checkpoint.py's test hook FTSTUDIO_FAULT_SLOW_CHECKPOINT
(seconds slept after each file of a checkpoint is written).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_trainer import write_text_data

pytestmark = pytest.mark.timeout(300)

TRAIN_FLAGS = ["--max-steps", "8", "--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--precision",
               "fp32", "--checkpoint-every", "1", "--keep-last", "2", "--eval-every", "0", "--eval-batches", "1",
               "--seed", "3", "--lr", "5e-3", "--quiet"]


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("FTSTUDIO_FAULT_SLOW_CHECKPOINT", None)
    env.update(extra)
    return env


def _ftstudio(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "ftstudio", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(predicate, proc, what, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _assert_newest_checkpoint_loads(tiny_llama, ckpts: Path) -> int:
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.train.checkpoint import latest_checkpoint, load_checkpoint
    newest = latest_checkpoint(ckpts)
    assert newest is not None, sorted(p.name for p in ckpts.iterdir())
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    state = load_checkpoint(newest, model=model, restore_rng=False)
    assert newest.name == f"step-{state.step}"
    return state.step


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path / "final" / "model.safetensors"))


def test_sigkill_at_several_moments_then_resume_gives_the_uninterrupted_weights(tiny_llama, tmp_path):
    data = write_text_data(tmp_path / "d.jsonl", n=40)
    out = tmp_path / "runs"
    base = ["train", "--model", tiny_llama, "--dataset", data, "--output", out, *TRAIN_FLAGS]
    slow = _env(FTSTUDIO_FAULT_SLOW_CHECKPOINT="0.25")

    reference = _ftstudio([*base, "--run-name", "straight"], _env())
    victim = _ftstudio([*base, "--run-name", "killed"], slow)
    run_dir, ckpts = out / "killed", out / "killed" / "checkpoints"

    # 1. Killed just after step 2's checkpoint landed (mid-step 3 or mid-way through its checkpoint).
    _wait_for(lambda: (ckpts / "step-2").is_dir(), victim, "checkpoint step-2")
    _kill(victim)
    assert _assert_newest_checkpoint_loads(tiny_llama, ckpts) >= 2

    # 2. Resumed (with the run's own config.yaml), then killed in the middle of writing a checkpoint.
    victim = _ftstudio(["train", "--resume", run_dir, "--quiet"], slow)
    mine = f"-{victim.pid}"
    partial = lambda: [p for p in ckpts.glob(f".tmp-step-*{mine}") if (p / "model.safetensors").exists()]  # noqa: E731
    _wait_for(lambda: bool(partial()), victim, "a checkpoint write in progress")
    _kill(victim)
    assert partial(), "the interrupted write left its temporary folder (and only that)"
    step = _assert_newest_checkpoint_loads(tiny_llama, ckpts)
    assert f"step-{step}" not in partial()[0].name, "the half-written checkpoint is not listed as complete"

    # 3. Resumed, killed again after step 6.
    victim = _ftstudio(["train", "--resume", run_dir, "--quiet"], slow)
    _wait_for(lambda: (ckpts / "step-6").is_dir(), victim, "checkpoint step-6")
    _kill(victim)
    _assert_newest_checkpoint_loads(tiny_llama, ckpts)

    # 4. Resumed to the end, at normal speed.
    last = _ftstudio(["train", "--resume", run_dir, "--quiet", "--json"], _env())
    out_last, err_last = last.communicate(timeout=240)
    out_ref, err_ref = reference.communicate(timeout=240)
    assert reference.returncode == 0, err_ref[-3000:]
    assert last.returncode == 0, err_last[-3000:]
    assert '"status": "finished"' in out_last.splitlines()[-1]

    a, b = _weights(out / "straight"), _weights(run_dir)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), f"{name} differs from the uninterrupted run"
    # keep_last 2 holds, and nothing temporary is left behind by the killed writes.
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-7", "step-8"]

    from ftstudio.core.runs import read_metrics
    events = read_metrics(run_dir)
    assert {e["step"] for e in events if e["event"] == "step"} == set(range(1, 9))
    assert events[-1]["event"] == "finished"


def test_resume_of_a_folder_that_is_not_a_run_is_a_clean_error(tmp_path):
    proc = _ftstudio(["train", "--resume", tmp_path / "nowhere"], _env())
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    assert "nowhere" in err and "config.yaml" in err and "not found" in err


BLOCK_NETWORK = r'''
import os, socket, sys
LOG = os.environ["NET_LOG"]
def _record(what):
    with open(LOG, "a") as fh:
        fh.write(repr(what) + "\n")
    raise OSError("network access blocked by the test")
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(("connect", address))
    return _connect(self, address)
def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _record(("connect_ex", address))
    return _connect_ex(self, address)
socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
socket.create_connection = lambda address, *a, **k: _record(("create_connection", address))
socket.getaddrinfo = lambda host, *a, **k: _record(("getaddrinfo", host))
from ftstudio.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_demo_trains_with_sockets_blocked_and_logs_no_secret(tmp_path):
    """No offline flags here: the bundled demo must not even look anything up on the network."""
    runner = tmp_path / "offline_runner.py"
    runner.write_text(BLOCK_NETWORK)
    net_log = tmp_path / "net.log"
    secret = "hf_SECRETtokenDoNotLog1234567890"
    env = _env(NET_LOG=str(net_log), HF_TOKEN=secret, HUGGING_FACE_HUB_TOKEN=secret, WANDB_API_KEY=secret,
               HF_HOME=str(tmp_path / "hf-home"))
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(k)
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(runner), "train", "--demo", "--max-steps", "2", "--batch-size", "4",
                           "--seq-len", "64", "--eval-batches", "1", "--output", str(out), "--run-name", "demo",
                           "--json"], env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not net_log.exists(), f"network access attempted:\n{net_log.read_text()}"
    assert '"status": "finished"' in proc.stdout.splitlines()[-1]
    assert secret not in proc.stdout + proc.stderr
    for f in (out / "demo").rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".jsonl", ".json", ".txt", ".md"):
            assert secret not in f.read_text(errors="replace"), f
