"""A hyper-parameter sweep with Optuna (an optional extra: ``pip install 'ftstudio[sweep]'``): the LR drawn
log-uniformly (optionally the batch size from a list and the warmup ratio from a range), each trial a real short
run (``train.Trainer``) in its own run folder, a median pruner on the trials' intermediate evaluations, and
at the end a results table, a plot of the eval metric against the LR and ``best.yaml`` (the user's config
with the best trial's values: ``ftstudio train best.yaml`` runs it at the user's own length).

Optuna's ask-and-tell interface keeps the loop ours: the user's Stop ends the running trial and the sweep;
a pruned trial ends at its evaluation with no checkpoint.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ftstudio.core.control import Control
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import EvalMetrics, LogLine, RunFailed
from ftstudio.core.runs import make_run_name


@dataclass
class SweepSpec:
    lr_low: float = 1e-6
    lr_high: float = 1e-4
    trials: int = 8
    max_steps: int = 50
    batch_sizes: list[int] = field(default_factory=list)   # empty: the config's batch size
    warmup: tuple[float, float] | None = None                # warmup_ratio range, or the config's warmup

    def check(self) -> None:
        if not 0 < self.lr_low < self.lr_high <= 1:
            raise ConfigError("sweep --lr", f"{self.lr_low:g}:{self.lr_high:g} must be LOW:HIGH with 0 < LOW < HIGH <= 1")
        if self.trials < 1 or self.max_steps < 2:
            raise ConfigError("sweep", "--trials must be at least 1 and --max-steps at least 2")
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError("sweep --batch-sizes", f"{self.batch_sizes} must be positive whole numbers")
        if self.warmup is not None and not 0 <= self.warmup[0] <= self.warmup[1] <= 1:
            raise ConfigError("sweep --warmup", f"{self.warmup[0]:g}:{self.warmup[1]:g} must lie within 0:1")


@dataclass
class SweepResult:
    folder: str
    metric: str
    trials: list[dict] = field(default_factory=list)  # number, state, lr, [batch_size, warmup_ratio], value, ...
    best: dict | None = None
    best_config: str | None = None
    table: str | None = None
    plot: str | None = None
    status: str = "finished"                           # or "stopped"
    caveat: str = ""                                   # why the best may not be better than the others (best_caveat)

    def summary(self) -> dict:
        return {"caveat": self.caveat, "best_lr": self.best["lr"] if self.best else None, "best_config": self.best_config,
                "metric": self.metric, "best_value": self.best["value"] if self.best else None,
                "trials": self.trials, "table": self.table, "plot": self.plot, "folder": self.folder,
                "status": self.status}


class _TrialControl(Control):
    """The user's stop and pause, plus the pruner's stop."""

    def __init__(self, user: Control):
        super().__init__()
        self.user = user

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set() or self.user.stop_requested

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        self.user.wait_while_paused(poll_s)


def _trial_trainer():
    """The trainer of a trial: a stopped (pruned) trial keeps no checkpoint; its weights are not wanted."""
    from ftstudio.engine.train import Trainer

    class TrialTrainer(Trainer):
        def _save_checkpoint(self, model, scaler, **_) -> None:   # ended=: no end checkpoint either
            pass

    return TrialTrainer


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweep", "needs Optuna: pip install 'ftstudio[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def trial_eval_every(cfg, max_steps: int) -> int:
    """The user's interval when it evaluates inside the trial, else four evaluations (the pruner needs them)."""
    every = cfg.eval.eval_every
    return every if 0 < every < max_steps else max(1, max_steps // 4)


def sweep(cfg, spec: SweepSpec, reporter=None, control: Control | None = None,
          on_trial: Callable[[dict], None] | None = None, *, check_plan: bool = True) -> SweepResult:
    spec.check()
    optuna = _optuna()
    from optuna.trial import TrialState

    report = reporter or (lambda e: None)
    control = control or Control()
    on_trial = on_trial or (lambda t: None)
    metric = cfg.eval.metric
    name = f"sweep-{make_run_name(cfg.model.source)}"
    folder = Path(cfg.train.output) / name
    every = trial_eval_every(cfg, spec.max_steps)
    base = cfg.replace(max_steps=spec.max_steps, eval_every=every, export=False, checkpoint_every=0,
                       early_stop_patience=0, export_best=False)
    if check_plan:  # the largest batch the sweep may draw
        from ftstudio.engine.train.preflight import check_memory_plan
        widest = base.replace(batch_size=max(spec.batch_sizes)) if spec.batch_sizes else base
        report(LogLine(check_memory_plan(widest, "the sweep").message))
    try:
        folder.mkdir(parents=True, exist_ok=False)
    except OSError as e:
        raise ConfigError("train.output", f"cannot create the sweep folder {folder}: {e.strerror or e}") from None

    direction = "minimize" if metric == "loss" else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=cfg.train.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=min(2, spec.trials - 1),
                                                                   n_warmup_steps=0))
    result = SweepResult(folder=str(folder), metric=metric)
    for number in range(spec.trials):
        if control.stop_requested:
            result.status = "stopped"
            break
        trial = study.ask()
        values = {"lr": trial.suggest_float("lr", spec.lr_low, spec.lr_high, log=True)}
        if spec.batch_sizes:
            values["batch_size"] = trial.suggest_categorical("batch_size", list(spec.batch_sizes))
        if spec.warmup is not None:
            values["warmup_ratio"] = trial.suggest_float("warmup_ratio", *spec.warmup)
        row = {"number": number, "state": "running", **values, "value": None, "step": 0, "run_dir": ""}
        on_trial(dict(row))
        report(LogLine(f"Trial {number}: " + ", ".join(f"{k} {v:.3g}" for k, v in values.items())))
        trial_cfg = base.replace(run_name=f"{name}-t{number:02d}", output=cfg.train.output,
                                 **({"warmup_steps": None} if "warmup_ratio" in values else {}), **values)
        trial_control = _TrialControl(control)
        pruned = {"at": None}

        def listen(event, trial=trial, row=row, trial_control=trial_control, pruned=pruned):
            report(event)
            if isinstance(event, EvalMetrics) and not trial_control.stop_requested:
                value = getattr(event, metric)
                if value is None or not math.isfinite(value):
                    return
                row["value"], row["step"] = value, event.step
                if event.step < spec.max_steps:  # the final evaluation is the trial's value, not a report
                    trial.report(value, event.step)
                    on_trial(dict(row))
                    if trial.should_prune():
                        pruned["at"] = event.step
                        trial_control.request_stop()

        trainer = _trial_trainer()(trial_cfg, listen, trial_control)
        outcome = trainer.run()
        row["run_dir"] = str(trainer.run_dir or "")
        if isinstance(outcome, RunFailed):
            row["state"], row["reason"] = "failed", outcome.reason
            study.tell(trial, state=TrialState.FAIL)
        elif pruned["at"] is not None:
            row["state"] = "pruned"
            report(LogLine(f"Trial {number} pruned at step {pruned['at']}: eval {metric} {row['value']:.4f} is "
                           "worse than the median of earlier trials at that step"))
            study.tell(trial, state=TrialState.PRUNED)
        elif outcome.status == "stopped":
            row["state"] = "stopped"
            study.tell(trial, state=TrialState.FAIL)
            result.status = "stopped"
        elif metric not in outcome.eval:
            raise ConfigError("data.val_fraction", "a sweep ranks trials by their validation "
                              f"{metric}: the data needs validation rows (val_fraction > 0 or val_dataset)")
        else:
            row["state"], row["value"], row["step"] = "complete", outcome.eval[metric], outcome.steps
            study.tell(trial, row["value"])
        result.trials.append(row)
        on_trial(dict(row))
        if result.status == "stopped":
            break

    _finish(result, cfg, folder, report)
    return result


NOISE_REL = 0.01   # short runs of the same config differ by about this share of their eval loss (seeds, batches)
SHORT_TRIAL = 20   # steps: fewer cannot tell learning rates apart (the schedule barely leaves warm-up)


def best_caveat(done: list[dict], metric: str) -> str:
    """Why the sweep's best may be no better than the runner-up: a margin inside the noise of short runs, or
    trials too short to separate; "" when the best stands out. Says what would decide it."""
    if len(done) < 2:
        return ""
    ranked = sorted(done, key=(lambda t: t["value"]) if metric == "loss" else (lambda t: -t["value"]))
    best, second = ranked[0], ranked[1]
    margin = abs(second["value"] - best["value"])
    noise = NOISE_REL * abs(best["value"]) if metric == "loss" else 0.01
    steps = min(int(t.get("step") or 0) for t in done)
    if margin <= noise:
        return (f"the best trial's eval {metric} ({best['value']:.4f}) is only {margin:.4f} from the runner-up's "
                f"({second['value']:.4f}), inside the noise between short runs (about {noise:.4f}): the sweep "
                "cannot tell them apart. Repeat the top trials with more steps before choosing")
    if steps < SHORT_TRIAL:
        return (f"each trial ran only {steps} steps, too few to tell learning rates apart (the schedule barely "
                "leaves warm-up). Run trials of at least 50 steps")
    return ""


def _finish(result: SweepResult, cfg, folder: Path, report) -> None:
    done = [t for t in result.trials if t["state"] == "complete"]
    if done:
        key = (lambda t: t["value"]) if result.metric == "loss" else (lambda t: -t["value"])
        result.best = min(done, key=key)
        result.caveat = best_caveat(done, result.metric)
        if result.caveat:
            report(LogLine(f"The best trial may be no better than the others: {result.caveat}", "warning"))
        knobs = {k: result.best[k] for k in ("lr", "batch_size", "warmup_ratio") if k in result.best}
        if "warmup_ratio" in knobs:
            knobs["warmup_steps"] = None
        best_cfg = cfg.replace(run_name=None, **knobs)
        result.best_config = str(folder / "best.yaml")
        best_cfg.save(result.best_config)
    result.table = str(folder / "results.md")
    Path(result.table).write_text(results_table(result), encoding="utf-8")
    with open(folder / "results.csv", "w", newline="", encoding="utf-8") as fh:
        cols = ["number", "state", "lr", "batch_size", "warmup_ratio", "value", "step", "run_dir"]
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(result.trials)
    try:
        from ftstudio.engine.plots import save_sweep_plot
        result.plot = save_sweep_plot(folder / "sweep.png", result.trials, result.metric)
    except ImportError:
        report(LogLine("No plot: matplotlib is not installed (pip install 'ftstudio[plot]')", "warning"))
    (folder / "sweep.json").write_text(json.dumps(result.summary(), indent=1, default=str), encoding="utf-8")


def results_table(result: SweepResult) -> str:
    """A Markdown table of the trials, best first among the completed; pruned trials marked."""
    extra = [k for k in ("batch_size", "warmup_ratio") if any(k in t for t in result.trials)]
    head = ["trial", "state", "lr", *extra, f"eval {result.metric}", "at step", "run folder"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in result.trials:
        mark = " **(best)**" if result.best is not None and t["number"] == result.best["number"] else ""
        state = t["state"].upper() if t["state"] == "pruned" else t["state"]
        cells = [str(t["number"]), state + mark, f"{t['lr']:.2e}", *(f"{t.get(k, '')}" if k == "batch_size"
                 else f"{t.get(k, 0):.3f}" for k in extra),
                 "–" if t["value"] is None else f"{t['value']:.4f}", str(t["step"]), Path(t["run_dir"]).name]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

