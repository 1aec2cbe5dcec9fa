"""Every single-GPU option runs sharded (issue 19): one torchrun launch of two gloo ranks trains each combination
of tests/fsdp_matrix_worker.py's COMBOS for 2 steps, stops (a DCP checkpoint), resumes, and must match one
process reading the same global batch; then one rank resumes a two-rank checkpoint at the same sample."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from fsdp_matrix_worker import COMBOS, RESHARD
from test_trainer import lm_config, write_class_data, write_text_data

pytestmark = pytest.mark.timeout(420)
HERE = Path(__file__).parent


def _torchrun(n: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def matrix(tiny_llama, tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp-matrix")
    # Dropout draws from each rank's own RNG stream: no sharded run can match one process's masks.
    bert = out / "bert-no-dropout"
    shutil.copytree(tiny_bert, bert)
    config = json.loads((bert / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (bert / "config.json").write_text(json.dumps(config))
    models = {"llama": str(tiny_llama), "llama_data": str(write_text_data(out / "text.jsonl")),
              "bert": str(bert), "bert_data": str(write_class_data(out / "class.jsonl"))}
    (out / "models.json").write_text(json.dumps(models))
    done = _torchrun(2, str(HERE / "fsdp_matrix_worker.py"), str(out / "models.json"), str(out), cwd=out)
    assert done.returncode == 0 and (out / "results.json").exists(), done.stderr[-4000:]
    return out, models, json.loads((out / "results.json").read_text())


def _gap(a: dict, b: dict, base: dict) -> float:
    """‖Δθ_a − Δθ_b‖ / ‖Δθ_b‖: how far the sharded update is from one process's, relative to the update."""
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in base)
    den = sum(float(((b[k].double() - base[k].double()) ** 2).sum()) for k in base)
    return (num / den) ** 0.5


@pytest.mark.parametrize("name,model,leaves,tol", COMBOS, ids=[c[0] for c in COMBOS])
def test_sharded_run_resumes_and_matches_one_process(matrix, name, model, leaves, tol):
    out, models, results = matrix
    r = results["results"][name]
    single, first, resumed = r["single"], r["first"], r["resumed"]
    assert single["status"] == "finished", single
    assert first["status"] == "stopped" and list(first["losses"]) == ["1"], first
    assert resumed["status"] == "finished" and list(resumed["losses"]) == ["2"], resumed
    losses = {**first["losses"], **resumed["losses"]}
    for step in ("1", "2"):
        assert losses[step] == pytest.approx(single["losses"][step], rel=tol), step
    # the checkpoint carries what the single-device one does, and a global data position
    assert r["extra"]["lr_factor"] == 1.0 and r["extra"]["global_position"] is True
    # sharded evaluation (each rank scores its share) equals the whole split scored by one process
    evals = first["evals"] + resumed["evals"]
    assert [e[0] for e in evals] == [e[0] for e in single["evals"]]
    for got, want in zip(evals, single["evals"]):
        assert got[1] == pytest.approx(want[1], rel=tol)
        assert got[2] == want[2]          # a classifier's accuracy: the gathered predictions
    drift = first["drift"] + resumed["drift"]
    assert [d[0] for d in drift] == [d[0] for d in single["drift"]]
    for got, want in zip(drift, single["drift"]):
        assert got[1] == pytest.approx(want[1], rel=max(tol, 1e-5), abs=1e-7)
    retention = first["retention"] + resumed["retention"]
    assert len(retention) == len(single["retention"])
    for got, want in zip(retention, single["retention"]):
        assert got[1] == pytest.approx(want[1], rel=tol)
    if tol <= 1e-5:       # fp32: the weights after two steps are the same update
        base = load_file(str(Path(models[model]) / "model.safetensors"))
        a = load_file(str(Path(resumed["run_dir"]) / "final" / "model.safetensors"))
        b = load_file(str(Path(single["run_dir"]) / "final" / "model.safetensors"))
        # a classifier's saved names carry the task model's prefix ("bert."); its new head is not in the base
        start = {k: base.get(k, base.get(k.split(".", 1)[-1])) for k in a if k in b}
        start = {k: v for k, v in start.items() if v is not None}
        assert len(start) >= len(a) // 2
        assert _gap(a, b, start) <= 1e-4


def test_a_two_rank_checkpoint_resumes_on_one_rank_at_the_same_sample(matrix):
    """The data position is global: one rank accumulating both ranks' micro-batches continues where two stopped."""
    out, models, results = matrix
    from ftstudio.core.config import RunConfig

    run_dir = out / "reshard"
    cfg = RunConfig.load(run_dir / "config.yaml")
    one = cfg.replace(grad_accum=cfg.train.grad_accum * 2, gpus=[0])
    one.save(out / "one-rank.yaml")
    done = _torchrun(1, "-m", "ftstudio.engine.distributed", str(out / "one-rank.yaml"), "--resume", str(run_dir),
                     cwd=out)
    assert done.returncode == 0, done.stderr[-4000:]
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    steps = {e["step"]: e["loss"] for e in events if e.get("event") == "step"}
    assert list(steps) == [2], steps
    two_ranks = results["results"][RESHARD]["resumed"]["losses"]["2"]
    assert steps[2] == pytest.approx(two_ranks, rel=1e-5)


def test_the_pull_with_the_step_in_backward_is_refused_before_a_sharded_launch(tiny_llama, tmp_path):
    from ftstudio.core.events import RunFailed
    from ftstudio.engine import run as train

    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", gpus=[0, 1],
                    optimizer_in_backward=True, l2sp=0.1)
    events = []
    result = train(cfg, events.append)
    assert isinstance(result, RunFailed) and "optimizer_in_backward" in result.reason
    assert "mix_fraction" in result.reason and not (tmp_path / "runs").exists()
    # one GPU keeps it; and the Largest preset's own grad_accum (1) is not blamed on several
    from ftstudio.engine import check_run
    check_run(cfg.replace(gpus=[0]).replace(device="cpu"))
    check_run(cfg.replace(l2sp=0.0))
