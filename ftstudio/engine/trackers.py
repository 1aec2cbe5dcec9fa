"""Experiment trackers as sinks: TensorBoard, Weights & Biases and MLflow receive the same events as
``metrics.jsonl`` (``train.report_to``). One small class per tracker, each importing its library only when it
is chosen (as transformers' ``integrations/integration_utils.py`` does).

Scalars go under ``train/`` (loss, lr, grad_norm, tokens_per_s, memory) and ``eval/`` (loss, perplexity,
accuracy, macro_f1, retention, drift); the run config goes in as hyper-parameters, beside the run's resolved
facts (``run.*``: the device, precision, task, parameters, rows and labels the run actually got, which "auto"
settings do not say); the final metrics as the run's summary, and the final model as an artifact
(``train.report_model``: its card, config and tokenizer files, or also the weights). Nothing leaves the machine
unless the user's tracker is configured for it: W&B runs offline unless an API key is known, MLflow writes a
SQLite store under the run folder (which ``mlflow ui`` opens as is) unless ``MLFLOW_TRACKING_URI`` is set. A
tracker that fails mid-run is switched off with a warning; it never stops the training.
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


def open_trackers(cfg, run_dir: Path, say=None) -> list["TrackerSink"]:
    """One sink per tracker in ``cfg.train.report_to``, writing under ``run_dir``; ``say`` (a reporter) is told
    where each one's copy of the run goes and how to open it."""
    sinks = [_CLASSES[name](cfg, Path(run_dir)) for name in check_trackers(cfg.train.report_to)]
    if say is not None:
        from ftstudio.core.events import LogLine
        for sink in sinks:
            say(LogLine(sink.where()))
    return sinks


def scalars(event: Event) -> tuple[int, dict[str, float]] | None:
    """``(step, {"train/loss": 2.3, ...})`` for an event that carries metrics, else None."""
    if isinstance(event, StepMetrics):
        vals = {"train/loss": event.loss, "train/lr": event.lr, "train/grad_norm": event.grad_norm,
                "train/tokens_per_s": event.tokens_per_s, "train/epoch": event.epoch,
                **{f"train/{k}": v for k, v in event.objective.items()}}
    elif isinstance(event, MemorySnapshot):
        vals = {f"train/memory_gib/{k}": getattr(event, k) / _GIB
                for k in ("weights", "gradients", "optimizer", "activations", "allocated_peak", "reserved",
                          "nvml_used") if getattr(event, k) is not None}
    elif isinstance(event, EvalMetrics):
        vals = {f"eval/{k}": getattr(event, k) for k in ("loss", "perplexity", "accuracy", "macro_f1",
                                                         "majority_baseline")}
        vals.update({f"eval/{k}": v for k, v in event.objective.items()})
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


def run_facts(event: RunStarted) -> dict[str, Any]:
    """What the run resolved "auto" to, as tracker parameters (``run.device``: "cuda:0", ...)."""
    facts = {"run.model": event.model, "run.task": event.task, "run.device": event.device,
             "run.precision": event.precision, "run.params": event.params, "run.total_steps": event.total_steps,
             "run.train_rows": event.train_rows, "run.val_rows": event.val_rows,
             "run.resumed_from_step": event.resumed_from_step}
    if event.labels:
        facts["run.labels"] = ",".join(event.labels)
    return facts


# Files of final/ that make up the "small" artifact: enough to read the card, rebuild the model's shape and
# tokenize, without the weights.
_SMALL = ("README.md", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "vocab.txt", "merges.txt", "vocab.json",
          "tokenizer.model", "added_tokens.json")


def model_files(final: str | Path | None, policy: str) -> list[Path]:
    """The files of ``final/`` a tracker keeps as the model artifact under ``policy`` (small | all | none)."""
    if policy == "none" or not final or not Path(final).is_dir():
        return []
    files = sorted(p for p in Path(final).iterdir() if p.is_file() and not p.name.startswith("."))
    return files if policy == "all" else [p for p in files if p.name in _SMALL]


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
            if isinstance(event, RunStarted):
                self.facts(run_facts(event))
            elif found is not None and found[1]:
                self.log(found[1], found[0])
            elif isinstance(event, RunFinished):
                files = model_files(event.final_model, getattr(self.cfg.train, "report_model", "small"))
                if files:
                    self.artifact(files)
                self.finish(final_metrics(event), failed=False)
                self.active = False
            elif isinstance(event, RunFailed):
                if self._started:
                    self.finish({}, failed=True)
                self.active = False
        except Exception as e:  # noqa: BLE001 - a tracker must never end a training run
            self.active = False
            log.warning("%s stopped receiving metrics: %s: %s", self.name, type(e).__name__, e)

    def where(self) -> str:
        return f"{self.name}: receives the run's metrics"

    def start(self) -> None: ...
    def facts(self, facts: dict[str, Any]) -> None: ...
    def log(self, values: dict[str, float], step: int) -> None: ...
    def artifact(self, files: list[Path]) -> None: ...
    def finish(self, summary: dict[str, float], failed: bool) -> None: ...


class TensorBoardSink(TrackerSink):
    """Event files under ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``)."""

    name = "tensorboard"

    def where(self) -> str:
        return f"TensorBoard: {self.run_dir / 'tensorboard'}; open it with: tensorboard --logdir {self.run_dir}"

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), flush_secs=10)
        self.writer.add_text("config", "```yaml\n" + self.cfg.to_yaml() + "```")

    def facts(self, facts) -> None:
        self._facts = facts
        self.writer.add_text("run", "\n".join(f"- {k}: {v}" for k, v in facts.items()))

    def log(self, values, step) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def artifact(self, files) -> None:
        # TensorBoard keeps no files: the model card (and where the model lies) as text.
        card = next((f for f in files if f.name == "README.md"), None)
        text = card.read_text(encoding="utf-8") if card else ""
        self.writer.add_text("model", f"final model: {files[0].parent}\n\n" + text)

    def finish(self, summary, failed) -> None:
        if summary:
            # The hyper-parameters beside the final metrics, in this run's own folder (run_name=".").
            hparams = {**flat_config(self.cfg), **getattr(self, "_facts", {})}
            self.writer.add_hparams(hparams, summary, run_name=".")
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

    @staticmethod
    def _mode() -> str:
        return os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")

    def where(self) -> str:
        project = os.environ.get("WANDB_PROJECT", "ftstudio")
        if self._mode() == "offline":
            return (f"W&B: an offline run in {self.run_dir / 'wandb'} (no API key known); upload it with: wandb "
                    f"sync {self.run_dir / 'wandb'}/offline-run-*, to project {project}")
        return f"W&B: run {self.run_dir.name} in project {project} ({self._mode()})"

    def start(self) -> None:
        import wandb

        mode = self._mode()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "ftstudio"), name=self.run_dir.name,
                              dir=str(self.run_dir), config=self.cfg.to_dict(), mode=mode, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))

    def facts(self, facts) -> None:
        self.run.config.update(facts, allow_val_change=True)

    def log(self, values, step) -> None:
        self.run.log(values, step=step)

    def artifact(self, files) -> None:
        import wandb

        art = wandb.Artifact(f"{self.run_dir.name}-model", type="model",
                             metadata={"files": [f.name for f in files], "path": str(files[0].parent)})
        for f in files:
            art.add_file(str(f), name=f.name)
        self.run.log_artifact(art)

    def finish(self, summary, failed) -> None:
        for key, value in summary.items():
            self.run.summary[key] = value
        self.run.finish(exit_code=1 if failed else 0)


class MLflowSink(TrackerSink):
    """An MLflow run: ``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``RUN_DIR/mlflow.db`` with its
    artifacts in ``RUN_DIR/mlartifacts`` (``mlflow ui --backend-store-uri sqlite:///RUN_DIR/mlflow.db``
    opens it as is; without SQLAlchemy, as mlflow-skinny alone installs, a file store in ``RUN_DIR/mlruns``);
    experiment ``MLFLOW_EXPERIMENT_NAME`` or "ftstudio". Uses a client of its own, so a run the user's process
    has active is left alone."""

    name = "mlflow"

    def _store(self) -> tuple[str, str | None]:
        """(tracking URI, artifact location of a new experiment)."""
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri, None
        if all(importlib.util.find_spec(m) for m in ("sqlalchemy", "alembic")):
            return (f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}",
                    (self.run_dir / "mlartifacts").resolve().as_uri())
        return (self.run_dir / "mlruns").resolve().as_uri(), None

    def where(self) -> str:
        uri = self._store()[0]
        return f"MLflow: {uri}" + ("" if os.environ.get("MLFLOW_TRACKING_URI") else
                                   f"; open it with: mlflow ui --backend-store-uri {uri}")

    def start(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri, artifacts = self._store()
        if uri.startswith("file:"):   # MLflow 3 keeps the file store in maintenance mode behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "ftstudio")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(name, artifacts)
        self.run_id = self.client.create_run(exp_id, run_name=self.run_dir.name,
                                             tags={"ftstudio.run_dir": str(self.run_dir)}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flat_config(self.cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def facts(self, facts) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in facts.items()])

    def artifact(self, files) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f), artifact_path="model")

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
