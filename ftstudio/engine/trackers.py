"""Experiment trackers as sinks: TensorBoard, Weights & Biases and MLflow receive the same events as
``metrics.jsonl`` (``train.report_to``). One small class per tracker, each importing its library only when it
is chosen (as transformers' ``integrations/integration_utils.py`` does).

Scalars go under ``train/`` (loss, lr, grad_norm, tokens_per_s, memory) and ``eval/`` (loss, perplexity,
accuracy, macro_f1, retention, drift); the run config goes in as hyper-parameters; the final metrics as the
run's summary. Nothing leaves the machine unless the user's tracker is configured for it: W&B runs offline
unless an API key is known, MLflow writes a file store under the run folder unless ``MLFLOW_TRACKING_URI``
is set. A tracker that fails mid-run is switched off with a warning; it never stops the training.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from ftstudio.core.errors import ConfigError
from ftstudio.core.events import (DriftMetrics, EvalMetrics, Event, MemorySnapshot, RetentionMetrics, RunFailed,
                                  RunFinished, RunStarted, StepMetrics)
from ftstudio.core.sections import report_targets

log = logging.getLogger("ftstudio.trackers")

# tracker → (the module that must be importable, the pip extra / package that provides it)
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
          "mlflow": ("mlflow", "mlflow-skinny")}
_GIB = 1024 ** 3


def check_trackers(report_to: str) -> list[str]:
    """The chosen trackers, or a ConfigError naming the first one that is not installed (call it before
    anything is written)."""
    names = report_targets(report_to)
    for name in names:
        module, package = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError("train.report_to", f"{name} is chosen but not installed: "
                              f"pip install \"ftstudio[{name}]\" (or pip install {package}), or drop it")
    return names


def open_trackers(cfg, run_dir: Path) -> list["TrackerSink"]:
    """One sink per tracker in ``cfg.train.report_to``, writing under ``run_dir``."""
    return [_CLASSES[name](cfg, Path(run_dir)) for name in check_trackers(cfg.train.report_to)]


def scalars(event: Event) -> tuple[int, dict[str, float]] | None:
    """``(step, {"train/loss": 2.3, ...})`` for an event that carries metrics, else None."""
    if isinstance(event, StepMetrics):
        vals = {"train/loss": event.loss, "train/lr": event.lr, "train/grad_norm": event.grad_norm,
                "train/tokens_per_s": event.tokens_per_s, "train/epoch": event.epoch}
    elif isinstance(event, MemorySnapshot):
        vals = {f"train/memory_gib/{k}": getattr(event, k) / _GIB
                for k in ("weights", "gradients", "optimizer", "activations", "allocated_peak", "reserved",
                          "nvml_used") if getattr(event, k) is not None}
    elif isinstance(event, EvalMetrics):
        vals = {f"eval/{k}": getattr(event, k) for k in ("loss", "perplexity", "accuracy", "macro_f1",
                                                         "majority_baseline")}
    elif isinstance(event, RetentionMetrics):
        vals = {"eval/retention_loss": event.loss, "eval/retention_perplexity": event.perplexity}
    elif isinstance(event, DriftMetrics):
        vals = {"eval/drift": event.total}
    else:
        return None
    return event.step, {k: float(v) for k, v in vals.items() if isinstance(v, (int, float)) and v is not None}


def final_metrics(event: RunFinished) -> dict[str, float]:
    """The run's summary: final train loss, final evaluation, steps and time."""
    out = {"final/steps": float(event.steps), "final/elapsed_s": float(event.elapsed_s)}
    if event.train_loss is not None:
        out["final/train_loss"] = float(event.train_loss)
    for k, v in (event.eval or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"final/eval_{k}"] = float(v)
    return out


def flat_config(cfg) -> dict[str, Any]:
    """``{"optim.lr": 5e-05, ...}``: scalars as they are, None and lists as text (trackers want scalars)."""
    out: dict[str, Any] = {}
    for section, fields in cfg.to_dict().items():
        for name, value in fields.items():
            out[f"{section}.{name}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class TrackerSink:
    """A reporter for one tracker: ``start`` at RunStarted, ``log`` for every metric event, ``finish`` at the
    end. An error inside the tracker turns it off (one warning) instead of failing the run."""

    name = "tracker"

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        self.active = True
        self._started = False

    def __call__(self, event: Event) -> None:
        if not self.active:
            return
        try:
            if not self._started and not isinstance(event, RunFailed):
                self._started = True
                self.start()
            found = scalars(event)
            if found is not None and found[1]:
                self.log(found[1], found[0])
            elif isinstance(event, RunFinished):
                self.finish(final_metrics(event), failed=False)
                self.active = False
            elif isinstance(event, RunFailed):
                if self._started:
                    self.finish({}, failed=True)
                self.active = False
        except Exception as e:  # noqa: BLE001 - a tracker must never end a training run
            self.active = False
            log.warning("%s stopped receiving metrics: %s: %s", self.name, type(e).__name__, e)

    def start(self) -> None: ...
    def log(self, values: dict[str, float], step: int) -> None: ...
    def finish(self, summary: dict[str, float], failed: bool) -> None: ...


class TensorBoardSink(TrackerSink):
    """Event files under ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``)."""

    name = "tensorboard"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), flush_secs=10)
        self.writer.add_text("config", "```yaml\n" + self.cfg.to_yaml() + "```")

    def log(self, values, step) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, summary, failed) -> None:
        if summary:
            # The hyper-parameters beside the final metrics, in this run's own folder (run_name=".").
            self.writer.add_hparams(flat_config(self.cfg), summary, run_name=".")
        self.writer.close()


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):  # no ~/.netrc
        return False


class WandbSink(TrackerSink):
    """A W&B run in ``RUN_DIR/wandb``: offline (``wandb sync`` uploads it later) unless the user is logged in
    or sets ``WANDB_MODE`` themselves; project ``WANDB_PROJECT`` or "ftstudio"."""

    name = "wandb"

    def start(self) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ftstudio"), name=self.run_dir.name,
                              dir=str(self.run_dir), config=self.cfg.to_dict(), mode=mode, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, values, step) -> None:
        self.run.log(values, step=step)

    def finish(self, summary, failed) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish(exit_code=1 if failed else 0)


class MLflowSink(TrackerSink):
    """An MLflow run: ``MLFLOW_TRACKING_URI`` when set, else a file store in ``RUN_DIR/mlruns``
    (``mlflow ui --backend-store-uri RUN_DIR/mlruns``); experiment ``MLFLOW_EXPERIMENT_NAME`` or "ftstudio".
    Uses a client of its own, so a run the user's process has active is left alone."""

    name = "mlflow"

    def start(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (self.run_dir / "mlruns").resolve().as_uri()
            # MLflow 3 keeps the file store in maintenance mode behind this switch; a database store would need
            # SQLAlchemy, which the light mlflow-skinny extra does not bring.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ftstudio")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                             tags={"ftstudio.run_dir": str(self.run_dir)}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(self.cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, values, step) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, summary, failed) -> None:
        if summary:
            self.log(summary, int(summary.get("final/steps", 0)))
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


_CLASSES: dict[str, type[TrackerSink]] = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MLflowSink}
