"""Several GPUs, on the CPU: two torchrun processes on gloo train the tiny llama with FSDP2 through the same
supervisor the GUI uses. The sharded run must equal one process accumulating the same global batch, survive
a stop + resume through DCP checkpoints, export a normal save_pretrained folder, and end with a clear
RunFailed (never a hang) when a rank is killed."""
import json
import os
import signal
import subprocess

import pytest

from ftstudio.core.control import Control
from ftstudio.core.events import CheckpointSaved, RunFailed, RunFinished, RunStarted, StepMetrics
from ftstudio.engine.distributed import launch_script, run_distributed
from ftstudio.engine import run as train
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, write_text_data

pytestmark = pytest.mark.timeout(240)


def _rank_pids(local_rank: str) -> list[int]:
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ftstudio.engine.distributed" in " ".join(child.cmdline()) \
                    and child.environ().get("LOCAL_RANK") == local_rank:
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def test_two_ranks_equal_one_process_through_stop_and_resume(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=8,
                    eval_every=0, checkpoint_every=0, memory_snapshot_every=100)
    # One process, batch 4 × 2 accumulation steps = the global batch of two ranks with batch 4 each.
    single_events = []
    single = Trainer(cfg.replace(grad_accum=2, run_name="single"), single_events.append).run()
    assert isinstance(single, RunFinished)

    # Two ranks; a stop request after step 2 checkpoints through DCP, then the run resumes to the end.
    events, control = [], Control()

    def stop_after_two(e):
        events.append(e)
        if isinstance(e, StepMetrics) and e.step == 2:
            control.request_stop()

    dist_cfg = cfg.replace(gpus=[0, 1], run_name="dist")
    first = train(dist_cfg, stop_after_two, control)
    assert isinstance(first, RunFinished) and first.status == "stopped", first
    assert 2 <= first.steps < 8
    assert any(isinstance(e, CheckpointSaved) for e in events)
    assert any(isinstance(e, RunStarted) and e.params > 0 for e in events)
    ckpt = tmp_path / "runs" / "dist" / "checkpoints" / f"step-{first.steps}"
    assert (ckpt / "dcp" / ".metadata").exists() and (ckpt / "rng-rank1.pt").exists()

    resumed = train(dist_cfg, events.append, resume_from=str(tmp_path / "runs" / "dist"))
    assert isinstance(resumed, RunFinished) and resumed.status == "finished", resumed

    single_loss = {e.step: e.loss for e in single_events if isinstance(e, StepMetrics)}
    dist_loss = {e.step: e.loss for e in events if isinstance(e, StepMetrics)}
    assert sorted(dist_loss) == list(range(1, 9))
    for step, loss in single_loss.items():
        assert dist_loss[step] == pytest.approx(loss, rel=1e-4, abs=1e-5), step
    # the global token count, not rank 0's share
    assert all(e.tokens_per_s > 0 for e in events if isinstance(e, StepMetrics))

    # rank 0 alone wrote the metrics; the export is a normal folder transformers loads, same weights
    lines = [json.loads(x) for x in (tmp_path / "runs" / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "step"] == list(range(1, 9))
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    final = tmp_path / "runs" / "dist" / "final"
    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    AutoModelForCausalLM.from_pretrained(final)
    a, b = load_file(str(final / "model.safetensors")), load_file(single.final_model + "/model.safetensors")
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_a_killed_rank_ends_the_run_with_a_clear_failure(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=100_000,
                    eval_every=0, gpus=[0, 1], export=False)
    events, killed = [], []

    def kill_rank_one(e):
        events.append(e)
        if isinstance(e, StepMetrics) and e.step == 2 and not killed:
            killed.extend(_rank_pids("1"))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    result = run_distributed(cfg, kill_rank_one, timeout_s=150)
    assert killed, "rank 1 was not found"
    assert isinstance(result, RunFailed), result
    assert "rank 1" in result.reason and "SIGKILL" in result.reason, result.reason
    assert "ran past" not in result.reason      # ended by the failure, not by the safety timeout
    assert events[-1] is result
    assert not _rank_pids("0")                   # no orphaned rank left behind


def test_a_user_error_on_the_ranks_is_reported_once(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, tmp_path / "missing.jsonl", tmp_path / "runs", gpus=[0, 1])
    events = []
    result = run_distributed(cfg, events.append, timeout_s=120)
    assert isinstance(result, RunFailed)
    assert "missing.jsonl" in result.reason
    assert sum(isinstance(e, RunFailed) for e in events) == 1


def test_launch_script_single_multi_node_and_slurm(tmp_path):
    one = launch_script("run.yaml", 1, 4, False)
    assert "torchrun --standalone --nproc-per-node=4 -m ftstudio.engine.distributed run.yaml" in one
    multi = launch_script("my run.yaml", 2, 8, False)
    assert "--nnodes=2" in multi and '--node-rank="$NODE_RANK"' in multi and "'my run.yaml'" in multi
    slurm = launch_script("run.yaml", 4, 8, True)
    header = [x for x in slurm.splitlines() if x.startswith("#SBATCH")]
    assert "#SBATCH --nodes=4" in header and "#SBATCH --gpus-per-node=8" in header
    assert "srun torchrun --nnodes=4 --nproc-per-node=8" in slurm and "--rdzv-backend=c10d" in slurm
    for script in (one, multi, slurm):
        path = tmp_path / "s.sh"
        path.write_text(script)
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    with pytest.raises(ValueError):
        launch_script("run.yaml", 0, 8, False)


def test_launch_script_cli(tmp_path, capsys):
    from ftstudio.cli import launch_script as verb
    from ftstudio.core.config import RunConfig

    cfg = tmp_path / "run.yaml"
    RunConfig().save(cfg)
    import argparse
    parser = argparse.ArgumentParser()
    verb.add_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["launch-script", str(cfg), "--nodes", "2", "--gpus-per-node", "4", "--slurm",
                              "-o", str(tmp_path / "job.sh")])
    assert args.func(args) == 0
    text = (tmp_path / "job.sh").read_text()
    assert "#SBATCH --nodes=2" in text and str(cfg) in text
    bad = parser.parse_args(["launch-script", str(tmp_path / "nope.yaml")])
    assert bad.func(bad) != 0
    assert "nope.yaml" in capsys.readouterr().err
