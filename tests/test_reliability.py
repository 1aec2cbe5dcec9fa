"""Reliability in-process on a tiny Llama: non-finite steps under each policy, a simulated out-of-memory
error, storage failures, pause, and the safety rules. Kill-and-resume and the offline demo run in
subprocesses: tests/test_reliability_kill.py. Bad input through the CLI: tests/test_reliability_cli.py.
"""
from __future__ import annotations

import errno
import gc
import re
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

from ftstudio.core.control import Control
from ftstudio.core.events import NonFiniteStep, RunFailed, RunFinished, StepMetrics
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, run, write_text_data


@pytest.fixture
def data(tmp_path):
    return write_text_data(tmp_path / "d.jsonl", n=32)


def _cfg(tiny_llama, data, tmp_path, **kw):
    return lm_config(tiny_llama, data, tmp_path / "runs", **{"eval_every": 0, "eval_batches": 1, **kw})


class Faults:
    """Wraps the training loss: on chosen training forwards (1-based) it makes the loss NaN, the gradients
    NaN (finite loss), or raises an out-of-memory error. Keeps only weak references to what it sees."""

    def __init__(self, monkeypatch, **at):
        import ftstudio.engine.train.loss as ml
        import ftstudio.engine.train.optim as optim

        self.at, self.calls, self.lrs = at, 0, {}
        self.model_ref = self.optimizer_ref = None
        real_loss, real_build = ml.causal_lm_loss, optim.build_optimizer

        def build(model, cfg, **kw):
            opt = real_build(model, cfg, **kw)
            self.optimizer_ref = weakref.ref(opt)
            return opt

        def loss_fn(model, batch, *, chunked):
            loss = real_loss(model, batch, chunked=chunked)
            if not model.training:
                return loss
            self.calls += 1
            self.model_ref = weakref.ref(model)
            self.lrs[self.calls] = [g["lr"] for g in self.optimizer_ref().param_groups]
            self.weights_at = getattr(self, "weights_at", {})
            if self.calls in at.get("snapshot", ()):
                self.weights_at[self.calls] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.calls in at.get("nan_loss", ()):
                return loss * float("nan")
            if self.calls in at.get("nan_grad", ()):
                p = next(model.parameters())
                return loss + 0.0 * torch.sqrt(p.sum() * 0.0)  # same loss; d/dx sqrt(0) = inf → NaN gradients
            if self.calls in at.get("oom", ()):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return loss

        monkeypatch.setattr(ml, "causal_lm_loss", loss_fn)
        monkeypatch.setattr(optim, "build_optimizer", build)

    def weights_finite(self) -> bool:
        return all(torch.isfinite(p).all() for p in self.model_ref().parameters())


def _nonfinite(events):
    return [(e.step, e.what, e.action) for e in events if isinstance(e, NonFiniteStep)]


# -- non-finite loss or gradients ---------------------------------------------------------------------------
def test_skip_policy_skips_up_to_max_skips_then_stops(tiny_llama, data, tmp_path, monkeypatch):
    faults = Faults(monkeypatch, nan_loss={3, 4, 5})
    keep = []  # the model outlives the run here only so that its weights can be checked
    monkeypatch.setattr(Trainer, "_release", lambda self: keep.append(getattr(self, "model", None)))
    result, events = run(_cfg(tiny_llama, data, tmp_path, nonfinite="skip", max_skips=2))
    assert _nonfinite(events) == [(2, "loss", "skipped"), (2, "loss", "skipped"), (2, "loss", "stopped")]
    assert all(e.advice for e in events if isinstance(e, NonFiniteStep))
    assert isinstance(result, RunFailed) and "non-finite loss" in result.reason
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [1, 2]
    assert faults.weights_finite()


def test_skipped_nan_gradient_never_reaches_the_weights_and_the_run_finishes(tiny_llama, data, tmp_path,
                                                                             monkeypatch):
    faults = Faults(monkeypatch, nan_grad={3}, snapshot={3, 4})
    result, events = run(_cfg(tiny_llama, data, tmp_path, max_steps=5))
    assert isinstance(result, RunFinished) and result.steps == 5
    assert _nonfinite(events) == [(2, "gradient", "skipped")]
    before, after = faults.weights_at[3], faults.weights_at[4]
    assert all(before[k].equal(after[k]) for k in before), "the skipped step changed no weight"
    from safetensors.torch import load_file
    final = load_file(str(Path(result.final_model) / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in final.values())


def test_stop_policy_stops_at_the_first_nan_gradient(tiny_llama, data, tmp_path, monkeypatch):
    Faults(monkeypatch, nan_grad={3})
    result, events = run(_cfg(tiny_llama, data, tmp_path, nonfinite="stop", checkpoint_every=1))
    assert _nonfinite(events) == [(2, "gradient", "stopped")]
    assert next(e for e in events if isinstance(e, NonFiniteStep)).advice
    assert isinstance(result, RunFailed) and "non-finite gradient at step 3" in result.reason
    from safetensors.torch import load_file
    ckpt = load_file(str(tmp_path / "runs" / "r" / "checkpoints" / "step-2" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in ckpt.values())


def test_rollback_policy_restores_the_checkpoint_and_halves_the_lr(tiny_llama, data, tmp_path, monkeypatch):
    # Steps 1..5 train (checkpoint at 4), the forward for step 6 gives NaN: back to step 4, half the LR.
    faults = Faults(monkeypatch, nan_loss={6}, snapshot={7})
    result, events = run(_cfg(tiny_llama, data, tmp_path, nonfinite="rollback", checkpoint_every=4, keep_last=3))
    assert _nonfinite(events) == [(4, "loss", "rolled back")]
    assert "step-4" in next(e for e in events if isinstance(e, NonFiniteStep)).advice
    assert isinstance(result, RunFinished) and result.steps == 8
    assert [e.step for e in events if isinstance(e, StepMetrics)] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
    # The first forward after the rollback sees exactly the step-4 weights ...
    from safetensors.torch import load_file
    ckpt = load_file(str(tmp_path / "runs" / "r" / "checkpoints" / "step-4" / "model.safetensors"))
    assert all(faults.weights_at[7][k].equal(v) for k, v in ckpt.items())
    # ... and the redone step 5 (forward 7) runs at half the LR of its first try (forward 5).
    assert faults.lrs[7] == pytest.approx([lr / 2 for lr in faults.lrs[5]], rel=1e-9)
    lr_at_5 = [e.lr for e in events if isinstance(e, StepMetrics) and e.step == 5]
    assert lr_at_5[1] == pytest.approx(lr_at_5[0] / 2, rel=1e-9)
    # Later checkpoints carry the factor, so a resumed run keeps the lower LR.
    state = torch.load(tmp_path / "runs" / "r" / "checkpoints" / "step-8" / "trainer_state.pt", weights_only=True)
    assert state["extra"]["lr_factor"] == 0.5


def test_rollback_without_a_checkpoint_stops_with_advice(tiny_llama, data, tmp_path, monkeypatch):
    Faults(monkeypatch, nan_loss={2})
    result, events = run(_cfg(tiny_llama, data, tmp_path, nonfinite="rollback"))
    assert _nonfinite(events) == [(1, "loss", "stopped")]
    assert "no checkpoint" in next(e for e in events if isinstance(e, NonFiniteStep)).advice
    assert isinstance(result, RunFailed)


# -- out of memory ------------------------------------------------------------------------------------------
def test_out_of_memory_ends_cleanly_releases_the_model_and_the_next_run_works(tiny_llama, data, tmp_path,
                                                                               monkeypatch):
    from ftstudio.engine.memory import explain_oom
    from ftstudio.engine.models import describe_model

    faults = Faults(monkeypatch, oom={3})
    cfg = _cfg(tiny_llama, data, tmp_path, max_steps=4)
    events = []
    trainer = Trainer(cfg, events.append)  # held on to, as a GUI worker may: it must not pin the model
    result = trainer.run()
    assert isinstance(result, RunFailed) and result.error_type == "OutOfMemoryError" and result.step == 2
    reason, advice = explain_oom(describe_model(str(tiny_llama)).config, cfg, 1, None, None)
    assert result.reason == f"Out of memory at step 3: {reason}" and result.advice == advice
    assert not any("Traceback" in getattr(e, "message", "") for e in events)
    gc.collect()
    assert faults.model_ref() is None, "the model is still referenced after the failed run"
    assert faults.optimizer_ref() is None, "the optimizer is still referenced after the failed run"

    monkeypatch.undo()
    again, _ = run(cfg.replace(run_name="again"))
    assert isinstance(again, RunFinished) and again.steps == 4


# -- storage ------------------------------------------------------------------------------------------------
def test_output_folder_that_cannot_be_created_is_a_clear_error(tiny_llama, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # Tests run as root, which ignores permissions: a path under a regular file can never be created.
    result, _ = run(lm_config(tiny_llama, data, blocker / "runs"))
    assert isinstance(result, RunFailed) and result.error_type == "ConfigError"
    assert "train.output" in result.reason and "a-file/runs" in result.reason
    assert "Not a directory" in result.reason


def _full_disk_on_second_save(monkeypatch, how):
    import safetensors.torch

    saves = {"n": 0}
    if how == "safetensors-enospc":
        real = safetensors.torch.save_file

        def save_file(tensors, filename, *a, **k):
            saves["n"] += 1
            if saves["n"] == 2:
                real(tensors, filename, *a, **k)  # a partial file is left behind, as on a real full disk
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(tensors, filename, *a, **k)
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    else:  # torch.save reports a full disk as a RuntimeError from its zip writer
        real = torch.save

        def save(obj, f, *a, **k):
            saves["n"] += 1
            if saves["n"] == 3:  # optimizer.pt of the second checkpoint
                raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
            return real(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", save)
        import ftstudio.engine.train.checkpoint as ck
        monkeypatch.setattr(ck, "free_bytes", lambda p: 1024)


@pytest.mark.parametrize("how", ["safetensors-enospc", "torch-save-runtime-error"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(how, tiny_llama, data, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.train.checkpoint import latest_checkpoint, load_checkpoint
    _full_disk_on_second_save(monkeypatch, how)
    result, _ = run(_cfg(tiny_llama, data, tmp_path, checkpoint_every=2, max_steps=6))
    monkeypatch.undo()
    assert isinstance(result, RunFailed) and result.step == 4
    assert "could not write checkpoint" in result.reason and "step-4" in result.reason
    assert "previous checkpoint is intact" in result.reason and "disk is full" in result.reason
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"], "no half-written folder is left"
    state = load_checkpoint(latest_checkpoint(ckpts), model=AutoModelForCausalLM.from_pretrained(tiny_llama),
                            restore_rng=False)
    assert state.step == 2


def test_keep_last_and_resume_needs_a_complete_checkpoint(tiny_llama, data, tmp_path):
    cfg = _cfg(tiny_llama, data, tmp_path, max_steps=5, checkpoint_every=1, keep_last=3)
    result, events = run(cfg)
    assert isinstance(result, RunFinished)
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-3", "step-4", "step-5"]
    # A run folder whose checkpoints are all incomplete (no trainer state) cannot be resumed: a clear error.
    import shutil
    other = tmp_path / "runs" / "other"
    shutil.copytree(tmp_path / "runs" / "r", other)
    for p in (other / "checkpoints").iterdir():
        (p / "trainer_state.pt").unlink()
    resumed, _ = run(cfg, resume_from=other)
    assert isinstance(resumed, RunFailed) and "no complete checkpoint" in resumed.reason


def test_checkpoint_folders_are_all_or_nothing(tmp_path):
    """Only a renamed-into-place ``step-N`` with its trainer state counts; leftovers of killed writes and
    deletes are ignored, then removed by the next save; a re-save of the same step replaces it whole."""
    from ftstudio.engine.train.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints,
                                                  load_checkpoint, save_checkpoint)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(root, step, model=model, optimizer=opt, scheduler=None, micro_batch=step, keep_last=2)
    assert [s for s, _ in list_checkpoints(root)] == [2, 3]
    (root / ".tmp-step-4-99999").mkdir()
    (root / ".tmp-step-4-99999" / "model.safetensors").write_bytes(b"half")
    (root / ".trash-step-1-99999").mkdir()
    (root / "step-9").mkdir()  # no trainer state: not a checkpoint
    assert latest_checkpoint(root).name == "step-3"
    with torch.no_grad():
        model.weight.fill_(7.0)
    save_checkpoint(root, 4, model=model, optimizer=opt, scheduler=None, micro_batch=4, keep_last=2)
    save_checkpoint(root, 4, model=model, optimizer=opt, scheduler=None, micro_batch=5, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-3", "step-4", "step-9"]
    fresh = torch.nn.Linear(3, 2)
    state = load_checkpoint(latest_checkpoint(root), model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()),
                            restore_rng=False)
    assert (state.step, state.micro_batch) == (4, 5) and fresh.weight.eq(7.0).all()
    (root / "step-4" / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="step-4 cannot be read"):
        load_checkpoint(root / "step-4", model=fresh, optimizer=torch.optim.AdamW(fresh.parameters()))


# -- control ------------------------------------------------------------------------------------------------
def test_pause_holds_without_losing_state(tiny_llama, data, tmp_path):
    """(Stop within one step: tests/test_trainer.py::test_stop_is_honoured_within_one_step.)"""
    cfg = _cfg(tiny_llama, data, tmp_path, max_steps=6)
    straight, _ = run(cfg.replace(run_name="straight"))
    control, paused, events = Control(), threading.Event(), []

    def reporter(event):
        events.append((time.monotonic(), event))
        if isinstance(event, StepMetrics) and event.step == 3:
            control.pause()
            paused.set()
    box = {}
    worker = threading.Thread(target=lambda: box.update(
        result=Trainer(cfg.replace(run_name="paused"), reporter, control).run()))
    worker.start()
    assert paused.wait(120)
    time.sleep(0.5)
    held = len(events)
    time.sleep(0.7)
    assert worker.is_alive() and control.paused and len(events) == held, "nothing happens while paused"
    resumed_at = time.monotonic()
    control.resume()
    worker.join(120)
    assert box["result"].status == "finished" and box["result"].steps == 6
    steps = [(t, e.step) for t, e in events if isinstance(e, StepMetrics)]
    assert [s for _, s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[3][0] >= resumed_at
    from safetensors.torch import load_file
    a = load_file(str(Path(straight.final_model) / "model.safetensors"))
    b = load_file(str(Path(box["result"].final_model) / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a), "pausing changed the result"


# -- safety -------------------------------------------------------------------------------------------------
def test_every_torch_load_in_ftstudio_is_weights_only():
    """Pickle files run code when loaded; weights_only=True refuses anything but tensors and plain data.
    (Remote model code: tests/test_models.py::test_remote_code_never_runs_unless_trusted.)"""
    import ftstudio
    root = Path(ftstudio.__file__).parent
    loads = 0
    for f in root.rglob("*.py"):
        src = f.read_text(encoding="utf-8")
        assert not re.search(r"\b(c?pickle|dill|joblib)\.loads?\(", src), f"{f} unpickles directly"
        unconditional = re.search(r"(?<![\"'\w])trust_remote_code\s*=\s*True", src)  # not in a message string
        assert not unconditional, f"{f} trusts remote code unconditionally"
        for m in re.finditer(r"torch\.load\(", src):
            depth, i = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(src[i], 0)
                i += 1
            call = src[m.start():i]
            loads += 1
            assert re.search(r"weights_only\s*=\s*True", call), f"{f}: {call}"
    assert loads >= 2  # the checkpoint's optimizer and trainer state at least


def test_a_resumed_run_keeps_counting_its_skipped_steps(tiny_llama, data, tmp_path, monkeypatch):
    """max_skips bounds the run, not each stretch between resumes: the count travels in the checkpoint."""
    Faults(monkeypatch, nan_loss={2})
    cfg = _cfg(tiny_llama, data, tmp_path, nonfinite="skip", max_skips=1, checkpoint_every=1, max_steps=3)
    result, events = run(cfg)
    assert isinstance(result, RunFinished) and _nonfinite(events) == [(1, "loss", "skipped")]
    run_dir = tmp_path / "runs" / "r"
    state = torch.load(sorted((run_dir / "checkpoints").glob("*/trainer_state.pt"))[-1], weights_only=False)
    assert state["extra"]["skips"] == 1
    Faults(monkeypatch, nan_loss={1})                   # the first forward after the resume is non-finite too
    more = cfg.replace(max_steps=5)
    refused, _ = run(more, resume_from=run_dir)         # a longer run is a change to what was trained: said
    assert isinstance(refused, RunFailed) and "train.max_steps 3 → 5" in refused.reason
    events = []
    result = Trainer(more, events.append, resume_from=run_dir, allow_config_change=True).run()
    assert _nonfinite(events)[-1][2] == "stopped"       # 2 skips in the run > max_skips 1: stopped, not skipped
