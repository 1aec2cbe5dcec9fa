"""Faults to the run's state, in this process on a tiny model: a run folder deleted or replaced mid-run, a full
disk (a real small tmpfs: it needs root to mount and is skipped, saying so, without), a failed export, edited and
damaged config.yaml and checkpoints, the run lock, and early stopping across a stop and resume.

Each asserts what is on disk afterwards, that the user reads one line with the command that continues, and
that continuing ends with exactly the weights (and step) of the run never interrupted."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ftstudio.core.control import Control
from ftstudio.core.events import CheckpointSaved, EvalMetrics, RunFailed, RunFinished, StepMetrics
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, write_text_data

pytestmark = pytest.mark.timeout(240)


def _run(cfg, *, on_event=None, control=None, resume_from=None, allow=False):
    events = []

    def report(e):
        events.append(e)
        if on_event is not None:
            on_event(e)
    result = Trainer(cfg, report, control, resume_from=resume_from, allow_config_change=allow).run()
    return result, events


def _final(run_dir: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.fixture
def data(tmp_path):
    return write_text_data(tmp_path / "d.jsonl", n=40)




# -- the folder -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_run_whose_folder_vanishes_never_reports_success(how, tiny_llama, data, tmp_path):
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=8, eval_every=0, checkpoint_every=2)
    run_dir = tmp_path / "runs" / "r"

    def strike(e):
        if isinstance(e, StepMetrics) and e.step == 3:
            if how == "deleted":
                shutil.rmtree(run_dir)
            else:
                run_dir.rename(tmp_path / "moved")
                run_dir.mkdir()
    result, events = _run(cfg, on_event=strike)
    assert isinstance(result, RunFailed) and not any(isinstance(e, RunFinished) for e in events)
    assert "was deleted, moved or replaced during the run (noticed at step 3)" in result.reason
    if how == "deleted":
        assert not run_dir.exists(), "the vanished folder is not half re-created"
    else:
        assert list(run_dir.iterdir()) == [], "nothing is written into the folder that replaced it"


# -- the lock ---------------------------------------------------------------------------------------------------
def test_run_lock_refuses_a_second_holder_naming_its_pid_and_takes_over_a_dead_ones(tmp_path):
    from ftstudio.core.errors import ConfigError
    from ftstudio.core.runlock import RunLock

    first = RunLock(tmp_path).acquire()
    with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
        RunLock(tmp_path).acquire()   # flock conflicts between two opens, even in one process
    first.release()
    assert (tmp_path / ".lock").read_text() == ""
    again = RunLock(tmp_path).acquire()
    assert again.previous_pid == ""   # released cleanly: nobody to take over from
    again.release()
    # A holder killed with SIGKILL leaves its pid in the file; the kernel dropped its flock.
    proc = subprocess.run(["python3", "-c", "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); "
                           "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()} x'.encode()); "
                           "os.kill(os.getpid(), 9)", str(tmp_path / ".lock")])
    assert proc.returncode == -9
    taken = RunLock(tmp_path).acquire()
    assert taken.previous_pid.isdigit() and taken.previous_pid != str(os.getpid())
    taken.release()


def test_a_second_trainer_on_a_running_folder_is_refused_before_writing(tiny_llama, data, tmp_path):
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=4, eval_every=0, checkpoint_every=1)
    run_dir = tmp_path / "runs" / "r"
    seen = {}

    def second_on_step_2(e):
        if isinstance(e, StepMetrics) and e.step == 2 and "result" not in seen:
            before = (run_dir / "metrics.jsonl").read_bytes()
            seen["result"], _ = _run(cfg, resume_from=run_dir)
            seen["same"] = (run_dir / "metrics.jsonl").read_bytes() == before
    result, _ = _run(cfg, on_event=second_on_step_2)
    assert isinstance(result, RunFinished)
    refused = seen["result"]
    assert isinstance(refused, RunFailed) and f"in use by process {os.getpid()}" in refused.reason
    assert seen["same"], "the refused run wrote nothing into the folder"


# -- a full disk --------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (root only; skipped with the reason otherwise), filled on demand to its last byte."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here (needs root): {proc.stderr.strip()}")

    class Disk:
        path = mnt
        filler = mnt / "filler"

        def fill(self):
            with open(self.filler, "ab") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError as e:
                    assert e.errno == errno.ENOSPC

        def free(self):
            self.filler.unlink(missing_ok=True)
    try:
        yield Disk()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_a_checkpoint_is_one_line_and_the_run_resumes_exactly(tiny_llama, data, tmp_path,
                                                                                small_disk):
    cfg = lm_config(tiny_llama, data, small_disk.path / "runs", max_steps=8, eval_every=0, checkpoint_every=2)
    straight, _ = _run(cfg.replace(output=str(tmp_path / "ref")))
    run_dir = small_disk.path / "runs" / "r"

    def fill_after_first(e):
        if isinstance(e, CheckpointSaved) and e.step == 2:
            small_disk.fill()
    result, _ = _run(cfg, on_event=fill_after_first)
    assert isinstance(result, RunFailed) and result.error_type == "DiskFullError", result
    assert "the disk is full" in result.reason and "free" in result.reason
    assert f"continue with: ftstudio train --resume {run_dir}" in result.reason and not result.advice   # one line
    from ftstudio.engine.train.checkpoint import list_checkpoints
    assert [s for s, _ in list_checkpoints(run_dir / "checkpoints")] == [2], "the newest complete state is kept"
    small_disk.free()
    resumed, _ = _run(cfg, resume_from=run_dir)
    assert isinstance(resumed, RunFinished) and resumed.steps == 8
    assert _same(_final(run_dir), _final(Path(straight.output_dir)))


def test_disk_full_during_the_export_keeps_the_weights_and_export_run_finishes(tiny_llama, data, tmp_path,
                                                                              small_disk, cli):
    cfg = lm_config(tiny_llama, data, small_disk.path / "runs", max_steps=6, eval_every=0)   # checkpoint_every 0
    straight, _ = _run(cfg.replace(output=str(tmp_path / "ref")))
    run_dir = small_disk.path / "runs" / "r"

    def fill_at_the_end_checkpoint(e):
        if isinstance(e, CheckpointSaved):
            small_disk.fill()
    result, _ = _run(cfg, on_event=fill_at_the_end_checkpoint)
    assert isinstance(result, RunFailed) and "the disk is full" in result.reason, result
    assert not (run_dir / "final").exists() and not list(run_dir.glob(".tmp-*"))
    said = result.reason
    assert not result.advice, "one line: what happened and the command that continues"
    assert f"ftstudio export {run_dir}" in said or f"ftstudio train --resume {run_dir}" in said
    assert (run_dir / "checkpoints" / "step-6").is_dir()
    small_disk.free()
    code, _, err = cli("export", run_dir)
    assert code == 0, err
    assert _same(_final(run_dir), _final(Path(straight.output_dir)))
    assert not (run_dir / "checkpoints").exists(), "the end checkpoint goes once final/ holds the weights"


def test_stdout_on_a_full_disk_is_one_line_not_an_internal_error(tiny_llama, small_disk):
    small_disk.fill()
    with open(small_disk.path / "filler", "rb"):
        pass
    out = small_disk.path / "out.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    with open(out, "w") as fh:
        proc = subprocess.run([os.sys.executable, "-m", "ftstudio", "estimate", str(tiny_llama),
                               "--json"], stdout=fh, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=200)
    assert proc.returncode == 1, proc.stderr
    assert "the disk is full" in proc.stderr and "internal error" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_disk_full_while_writing_metrics_is_one_line_and_resumes(tiny_llama, data, tmp_path, monkeypatch):
    """No root needed: metrics.jsonl's writes fail with ENOSPC from the fourth step on."""
    import ftstudio.engine.sinks as sinks

    class FullAfter:
        def __init__(self, fh):
            self.fh = fh

        def write(self, text):
            if '"event": "step", "step": 4' in text:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(text)

        def __getattr__(self, name):
            return getattr(self.fh, name)
    monkeypatch.setattr(sinks, "open", lambda *a, **k: FullAfter(open(*a, **k)), raising=False)
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=6, eval_every=0, checkpoint_every=2)
    result, events = _run(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "r"
    assert isinstance(result, RunFailed) and result.error_type == "DiskFullError", result
    assert "the disk is full" in result.reason and "internal error" not in result.reason
    assert f"continue with: ftstudio train --resume {run_dir}" in result.reason
    resumed, _ = _run(cfg, resume_from=run_dir)
    assert isinstance(resumed, RunFinished) and resumed.steps == 6


# -- a failed export (no root needed) ------------------------------------------------------------------------------
def test_a_failed_export_leaves_no_final_and_says_how_to_finish(tiny_llama, data, tmp_path, monkeypatch, cli):
    from transformers import PreTrainedModel

    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=4, eval_every=0)
    straight, _ = _run(cfg.replace(run_name="straight"))
    real = PreTrainedModel.save_pretrained

    def full(self, folder, *a, **k):
        real(self, folder, *a, **k)   # a whole model.safetensors, then the failure: nothing may look complete
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    result, _ = _run(cfg)
    monkeypatch.undo()
    run_dir = tmp_path / "runs" / "r"
    assert isinstance(result, RunFailed) and "the export failed" in result.reason
    assert "the disk is full" in result.reason and f"finish with: ftstudio export {run_dir}" in result.reason
    assert not (run_dir / "final").exists() and not list(run_dir.glob(".tmp-final-*"))
    code, _, err = cli("export", run_dir)
    assert code == 0, err
    assert _same(_final(run_dir), _final(Path(straight.output_dir)))


# -- config.yaml and checkpoints, edited or damaged --------------------------------------------------------------
def _stopped_run(tiny_llama, data, tmp_path, at=4, **kw):  # checkpoints at every second step, and one at ``at``
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", **{"max_steps": 8, "eval_every": 0, "checkpoint_every": 2,
                                                             "keep_last": 3, **kw})
    control = Control()
    result, _ = _run(cfg, control=control,
                     on_event=lambda e: isinstance(e, StepMetrics) and e.step == at and control.request_stop())
    assert result.status == "stopped" and result.steps == at
    return cfg, tmp_path / "runs" / "r"


def test_an_edited_config_yaml_is_refused_by_field_unless_allowed_and_then_applies(tiny_llama, data, tmp_path, cli):
    cfg, run_dir = _stopped_run(tiny_llama, data, tmp_path)
    shutil.copytree(run_dir, tmp_path / "copy")
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("lr: 0.005", "lr: 0.001").replace("seq_len: 32", "seq_len: 24"))
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 1 and "optim.lr 0.005 → 0.001" in err and "data.seq_len 32 → 24" in err
    assert "--allow-config-change" in err and "Traceback" not in err
    # A deliberate change: said, recorded in config.yaml, and the new LR really applies (the schedule's own
    # saved LR does not win).
    changed, events = _run(cfg.replace(lr=1e-3), resume_from=run_dir, allow=True)
    same, same_events = _run(cfg, resume_from=tmp_path / "copy")
    assert isinstance(changed, RunFinished) and isinstance(same, RunFinished)
    assert any("changed config" in getattr(e, "message", "") and "optim.lr" in e.message for e in events)
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()
    lr = {e.step: e.lr for e in events if isinstance(e, StepMetrics)}
    lr_same = {e.step: e.lr for e in same_events if isinstance(e, StepMetrics)}
    assert lr[5] == pytest.approx(lr_same[5] * 0.2)


def test_an_edited_dataset_is_refused_naming_the_file(tiny_llama, data, tmp_path, cli):
    _, run_dir = _stopped_run(tiny_llama, data, tmp_path)
    with open(data, "a", encoding="utf-8") as fh:
        fh.write('{"text": "one more row"}\n')
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 1 and "data.dataset contents (" in err and "sha256" in err and "--allow-config-change" in err


def test_an_emptied_config_yaml_is_refused_naming_the_model(tiny_llama, data, tmp_path, cli):
    _, run_dir = _stopped_run(tiny_llama, data, tmp_path)
    (run_dir / "config.yaml").write_text("")
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code in (1, 2) and "model.source" in err and "Traceback" not in err, err


@pytest.mark.parametrize("damage", ["truncated-weights", "garbage-state", "no-optimizer", "garbage-best"])
def test_a_damaged_checkpoint_is_one_line_naming_it(damage, tiny_llama, data, tmp_path, cli):
    _, run_dir = _stopped_run(tiny_llama, data, tmp_path, val_fraction=0.2, eval_every=2, export_best=True)
    ckpt = run_dir / "checkpoints" / "step-4"
    if damage == "truncated-weights":
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    elif damage == "garbage-state":
        (ckpt / "trainer_state.pt").write_bytes(b"not a zip at all")
    elif damage == "no-optimizer":
        (ckpt / "optimizer.pt").unlink()
    else:
        (ckpt / "best.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    errors = [line for line in err.splitlines() if "error" in line]
    assert code in (1, 2) and len(errors) == 1 and "step-4" in errors[0] and "cannot be read" in errors[0], err
    assert "remove step-4 to resume from step-2, the newest before it" in errors[0]
    shutil.rmtree(ckpt)   # as the line says: the resume then continues from step-2
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert "Traceback" not in err and "internal error" not in err


# -- early stopping across a stop and resume --------------------------------------------------------------------
def test_early_stop_and_export_best_end_alike_after_a_stop_and_resume(tiny_llama, tmp_path):
    from test_early_stop import _overfit_config

    cfg = _overfit_config(tiny_llama, tmp_path, early_stop_patience=3, export_best=True, checkpoint_every=0)
    straight, events = _run(cfg.replace(run_name="straight"))
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    assert straight.stop_reason and straight.best_step < straight.steps < cfg.train.max_steps
    # Stopped after the best evaluation and after at least one evaluation without improvement, so the resumed
    # run must know both the best weights and the patience already spent.
    at = next(e.step for e in evals if e.step > straight.best_step) + 1
    control = Control()
    first, _ = _run(cfg.replace(run_name="stopped"), control=control,
                    on_event=lambda e: isinstance(e, StepMetrics) and e.step == at and control.request_stop())
    assert first.status == "stopped" and first.steps == at
    resumed, _ = _run(cfg.replace(run_name="stopped"), resume_from=tmp_path / "runs" / "stopped")
    assert isinstance(resumed, RunFinished), resumed
    assert (resumed.steps, resumed.best_step, resumed.stop_reason) == (straight.steps, straight.best_step,
                                                                      straight.stop_reason)
    assert resumed.eval == straight.eval
    assert _same(_final(tmp_path / "runs" / "stopped"), _final(tmp_path / "runs" / "straight"))


def test_early_stop_ends_alike_from_a_checkpoint_left_by_a_kill(tiny_llama, tmp_path):
    """What a SIGKILL right after a periodic checkpoint leaves (the folder copied at that moment), resumed: the
    same stop step, best step and exported weights as the run never interrupted."""
    from test_early_stop import _overfit_config

    cfg = _overfit_config(tiny_llama, tmp_path, early_stop_patience=3, export_best=True, checkpoint_every=2,
                          keep_last=1)

    def snapshot(e):   # every checkpoint's moment, copied: one of them is picked below
        if isinstance(e, CheckpointSaved):
            shutil.copytree(tmp_path / "runs" / "straight", tmp_path / "copies" / str(e.step))
    straight, events = _run(cfg.replace(run_name="straight"), on_event=snapshot)
    # A moment after the best evaluation, with patience partly spent: the resume must know both.
    at = next(s for s in range(straight.best_step + 1, straight.steps) if (tmp_path / "copies" / str(s)).is_dir())
    shutil.copytree(tmp_path / "copies" / str(at), tmp_path / "runs" / "killed")
    assert straight.stop_reason and straight.best_step < at < straight.steps
    resumed, _ = _run(cfg.replace(run_name="killed"), resume_from=tmp_path / "runs" / "killed")
    assert (resumed.steps, resumed.best_step, resumed.stop_reason) == (straight.steps, straight.best_step,
                                                                      straight.stop_reason)
    assert _same(_final(tmp_path / "runs" / "killed"), _final(tmp_path / "runs" / "straight"))
