"""Experiment trackers as sinks (train.report_to): TensorBoard event files, W&B offline, MLflow file store; a
tracker that is not installed fails the run before anything is written."""
import importlib.util
import time
from pathlib import Path

import pytest

from ftstudio.cli import main
from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import (EvalMetrics, MemorySnapshot, RetentionMetrics, RunFailed, RunFinished, RunStarted,
                                  StepMetrics)
from test_trainer import run, write_text_data


def _events(run_dir):
    """A short run's events in the order the trainer sends them."""
    evs = [RunStarted(str(run_dir), "m", "causal-lm", "cpu", "fp32", 10, 4, 8, 2),
           RetentionMetrics(0, 3.0, 20.0)]
    for step in range(1, 5):
        evs.append(StepMetrics(step, 4.0 / step, 1e-4 * step, 0.5, 100.0 + step))
        if step % 2 == 0:
            evs.append(EvalMetrics(step, 2.0 / step, 7.0 / step, accuracy=0.5))
            evs.append(MemorySnapshot(step, "cpu", 2**30, 2**30, 2**31))
    final = Path(run_dir) / "final"
    final.mkdir(parents=True, exist_ok=True)
    for name, text in (("README.md", "---\ntags: [ftstudio]\n---\n# card\n"), ("config.json", "{}"),
                       ("tokenizer.json", "{}"), ("model.safetensors", "weights")):
        (final / name).write_text(text, encoding="utf-8")
    evs.append(RunFinished("finished", 4, 1.0, {"loss": 1.0, "perplexity": 2.7}, final_model=str(final)))
    return evs


def _feed(cfg, run_dir):
    from ftstudio.engine.trackers import open_trackers
    sinks = open_trackers(cfg, run_dir)
    for event in _events(run_dir):
        for sink in sinks:
            sink(event)
    return sinks


def test_report_to_is_validated_and_is_a_flag():
    assert RunConfig().train.report_to == "none"
    from ftstudio.core.sections import report_targets
    assert report_targets("TensorBoard, mlflow") == ["tensorboard", "mlflow"]
    assert report_targets("none") == [] and report_targets("") == []
    with pytest.raises(ConfigError, match="train.report_to: 'comet' is not one of tensorboard, wandb, mlflow"):
        RunConfig().replace(report_to="tensorboard,comet")
    from ftstudio.core.config import config_to_flags
    assert config_to_flags(RunConfig().replace(report_to="wandb")) == ["--report-to", "wandb"]


def test_missing_tracker_fails_before_the_run_folder_is_written(tiny_llama, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    data = write_text_data(tmp_path / "d.jsonl")
    code = main(["train", "--model", str(tiny_llama), "--dataset", str(data), "--max-steps", "2", "--device", "cpu",
                 "--output", str(tmp_path / "runs"), "--report-to", "wandb", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0
    assert "train.report_to: wandb is chosen but not installed: pip install \"ftstudio[wandb]\"" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_tensorboard_gets_train_and_eval_scalars_from_a_real_run(tiny_llama, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_text_data(tmp_path / "d.jsonl")
    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(data), max_steps=4, eval_every=2, batch_size=4,
                              seq_len=32, device="cpu", output=str(tmp_path / "runs"), run_name="tb",
                              report_to="tensorboard", export=False)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    acc = EventAccumulator(str(tmp_path / "runs" / "tb" / "tensorboard")).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss",
            "eval/perplexity"} <= tags
    losses = [(s.step, s.value) for s in acc.Scalars("train/loss")]
    reported = [(e.step, e.loss) for e in events if isinstance(e, StepMetrics)]
    assert [s for s, _ in losses] == [s for s, _ in reported] == [1, 2, 3, 4]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(losses, reported))
    assert [s.step for s in acc.Scalars("eval/loss")][:2] == [2, 4]


def _wandb_records(path):
    """The protobuf records of a .wandb file: a 7-byte header, then LevelDB-log records (crc32, length,
    type) in 32 KiB blocks; FIRST/MIDDLE/LAST records are joined."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, block, pieces = path.read_bytes(), 7, 32768, b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:              # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):                       # FULL, FIRST
            pieces = data
        elif kind in (3, 4):                     # MIDDLE, LAST
            pieces += data
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pieces)
            yield rec


def test_wandb_runs_offline_without_a_key(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))            # no ~/.netrc: not logged in
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = _feed(RunConfig().replace(report_to="wandb", lr=3e-5), tmp_path)
    run_obj = sinks[0].run
    assert run_obj.settings.mode == "offline" and run_obj.config["optim"]["lr"] == 3e-5
    assert run_obj.config["run.device"] == "cpu" and run_obj.config["run.train_rows"] == 8
    offline = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
    # The offline file holds the logged history: its records, read back with wandb's own protobuf types.
    # wandb's core process may still be writing the file when finish() returns: give it a few seconds.
    deadline = time.monotonic() + 30
    while True:
        history = [{i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
                   for rec in _wandb_records(offline[0]) if rec.WhichOneof("record_type") == "history"]
        losses = [float(h["train/loss"]) for h in history if "train/loss" in h]
        if len(losses) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert losses == [4.0, 2.0, 4.0 / 3, 1.0]
    assert any("eval/perplexity" in h for h in history)
    assert not sinks[0].active  # finished at RunFinished
    assert "stopped receiving" not in caplog.text  # facts, metrics and the model artifact all went in
    assert any(rec.WhichOneof("record_type") == "artifact" for rec in _wandb_records(offline[0]))
    del wandb


def test_mlflow_writes_a_sqlite_store_the_ui_opens_with_facts_and_the_model(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    sinks = _feed(RunConfig().replace(report_to="mlflow", lr=3e-5), tmp_path)
    assert (tmp_path / "mlflow.db").is_file() and not (tmp_path / "mlruns").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")  # what `mlflow ui --backend-store-uri` opens
    got = client.get_run(sinks[0].run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["optim.lr"] == "3e-05"
    assert got.data.params["run.device"] == "cpu" and got.data.params["run.params"] == "10"
    assert sorted(a.path for a in client.list_artifacts(got.info.run_id, "model")) == [
        "model/README.md", "model/config.json", "model/tokenizer.json"]  # "small": no weights
    assert [m.value for m in client.get_metric_history(got.info.run_id, "train/loss")] == [4.0, 2.0, 4.0 / 3, 1.0]
    assert [m.step for m in client.get_metric_history(got.info.run_id, "eval/loss")] == [2, 4]
    assert got.data.metrics["final/eval_perplexity"] == 2.7
    assert got.data.metrics["eval/retention_loss"] == 3.0
    assert got.data.metrics["train/memory_gib/optimizer"] == 2.0


def test_a_failing_tracker_is_switched_off_and_a_failed_run_is_marked(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from ftstudio.engine.trackers import open_trackers

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sink = open_trackers(RunConfig().replace(report_to="mlflow"), tmp_path)[0]
    sink(RunStarted(str(tmp_path), "m", "causal-lm", "cpu", "fp32", 10, 4, 8, 2))
    sink(RunFailed("boom"))
    assert MlflowClient(sink.client.tracking_uri).get_run(sink.run_id).info.status == "FAILED"

    broken = open_trackers(RunConfig().replace(report_to="mlflow"), tmp_path)[0]
    monkeypatch.setattr(broken, "log", lambda *a: 1 / 0)
    broken(RunStarted(str(tmp_path), "m", "causal-lm", "cpu", "fp32", 10, 4, 8, 2))
    broken(StepMetrics(1, 1.0, 1e-4, 0.1, 1.0))          # raises inside: the sink turns itself off
    broken(StepMetrics(2, 1.0, 1e-4, 0.1, 1.0))
    assert not broken.active and "mlflow stopped receiving metrics: ZeroDivisionError" in caplog.text


def test_model_files_follow_the_report_model_policy(tmp_path):
    from ftstudio.engine.trackers import model_files

    final = Path(_events(tmp_path)[-1].final_model)
    assert [f.name for f in model_files(final, "small")] == ["README.md", "config.json", "tokenizer.json"]
    assert "model.safetensors" in [f.name for f in model_files(final, "all")]
    assert model_files(final, "none") == [] and model_files(None, "all") == []
    with pytest.raises(ConfigError, match="train.report_model"):
        RunConfig().replace(report_model="weights")


def test_tensorboard_keeps_the_run_facts_and_the_card(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _feed(RunConfig().replace(report_to="tensorboard"), tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]
             if tag.endswith("text_summary")}
    assert any("run.device: cpu" in t for t in texts.values())
    assert any("# card" in t for t in texts.values())


def test_the_user_is_told_where_each_trackers_copy_goes(tmp_path, monkeypatch):
    """--report-to wandb without a key wrote an offline run under the run folder without a word: the user looked
    for it on wandb.ai. Each tracker now says where its copy goes and how to open or upload it."""
    for module in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(module)
    from ftstudio.core.events import LogLine
    from ftstudio.engine.trackers import open_trackers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))            # no ~/.netrc: not logged in
    said = []
    sinks = open_trackers(RunConfig().replace(report_to="tensorboard,wandb,mlflow"), tmp_path, said.append)
    assert len(sinks) == 3 and all(isinstance(e, LogLine) for e in said)
    tb, wb, ml = (e.message for e in said)
    assert tb.startswith(f"TensorBoard: {tmp_path / 'tensorboard'}") and f"tensorboard --logdir {tmp_path}" in tb
    assert f"W&B: an offline run in {tmp_path / 'wandb'}" in wb and f"wandb sync {tmp_path / 'wandb'}" in wb
    assert ml.startswith("MLflow: ") and "mlflow ui --backend-store-uri" in ml
    assert not any(tmp_path.iterdir())   # said before anything starts: nothing written yet
