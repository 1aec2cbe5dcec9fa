"""Early stopping and the best model: which evaluation was best (by ``eval.metric``), a host-memory copy of
its weights when ``checkpoint.export_best`` asks for it, and the end of a run whose metric stopped improving
for ``eval.early_stop_patience`` evaluations in a row.

The seed's reason: every extra step moves the weights further from θ0; once the validation loss turns up,
more steps buy forgetting, not skill. The trainer calls :meth:`BestTracker.update` from ``_evaluate`` and
:meth:`BestTracker.check_patience` after a periodic evaluation (``_periodic``).
"""
from __future__ import annotations

import math

from ftstudio.core.errors import ConfigError

HIGHER_IS_BETTER = {"loss": False, "accuracy": True, "macro_f1": True}


class EarlyStop(Exception):
    """Raised out of the loop when patience ran out; its message is the reason the run ended."""


def better(metric: str, new: float, old: float | None) -> bool:
    """Strictly better (a tie is no improvement, so a plateau counts against patience)."""
    if old is None:
        return True
    return new > old if HIGHER_IS_BETTER[metric] else new < old


class BestTracker:
    """The best evaluation so far and, when ``keep_weights``, a CPU copy of its weights."""

    def __init__(self, metric: str = "loss", patience: int = 0, keep_weights: bool = False):
        self.metric, self.patience, self.keep_weights = metric, patience, keep_weights
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_result: dict = {}
        self.last_result: dict = {}
        self.bad_evals = 0                      # evaluations in a row without improvement
        self._weights: list | None = None

    @classmethod
    def for_run(cls, cfg, task: str, has_val: bool, report=None, model=None) -> "BestTracker":
        metric = cfg.eval.metric
        if metric != "loss" and task != "classification" and not (metric == "accuracy" and cfg.train.method != "sft"):
            raise ConfigError("eval.metric", f"{metric!r} is for classifiers; this run trains a {task} model, "
                              "judged by its validation loss")
        wants = cfg.eval.early_stop_patience > 0 or cfg.checkpoint.export_best
        if wants and not has_val and report is not None:
            from ftstudio.core.events import LogLine
            report(LogLine("early stopping / export_best need validation rows (data.val_fraction or "
                           "data.val_dataset): the run goes to its last step and exports the last weights",
                           "warning"))
        if cfg.eval.early_stop_patience > 0 and not cfg.eval.eval_every and report is not None:
            from ftstudio.core.events import LogLine
            report(LogLine("eval.early_stop_patience needs eval.eval_every > 0 (evaluations during the run): "
                           "it cannot stop this run early", "warning"))
        keep = cfg.checkpoint.export_best and has_val
        if keep and model is not None:
            check_host_room(model)
        return cls(metric, cfg.eval.early_stop_patience, keep)

    def update(self, step: int, result: dict, model) -> bool:
        """Record an evaluation; True when it is the best so far (its weights are then copied if kept)."""
        self.last_result = dict(result)
        value = result.get(self.metric)
        if value is None or not math.isfinite(value):
            self.bad_evals += 1
            return False
        if not better(self.metric, value, self.best_value):
            self.bad_evals += 1
            return False
        self.best_value, self.best_step, self.best_result = value, step, dict(result)
        self.bad_evals = 0
        if self.keep_weights:
            self._weights = snapshot(model)
        return True

    def check_patience(self, step: int) -> None:
        if self.patience and self.bad_evals >= self.patience:
            raise EarlyStop(f"Early stop at step {step}: eval {self.metric} has not improved for {self.bad_evals} "
                            f"evaluations (best {self.best_value:.4f} at step {self.best_step})"
                            if self.best_step is not None else
                            f"Early stop at step {step}: eval {self.metric} was not finite for {self.bad_evals} "
                            "evaluations")

    # -- in every checkpoint, so a resumed run stops at the same step and exports the same weights ---------
    def state_dict(self) -> dict:
        """What the tracker knows, as plain values (the best weights travel apart: :attr:`weights`)."""
        return {"best_value": self.best_value, "best_step": self.best_step, "best_result": dict(self.best_result),
                "last_result": dict(self.last_result), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict | None, weights: list | None = None) -> None:
        if not state:
            return
        self.best_value, self.best_step = state.get("best_value"), state.get("best_step")
        self.best_result, self.last_result = dict(state.get("best_result") or {}), dict(state.get("last_result") or {})
        self.bad_evals = int(state.get("bad_evals") or 0)
        if self.keep_weights and weights is not None:
            self._weights = weights

    @property
    def weights(self) -> list | None:
        """The host copy of the best weights (export_best), or None."""
        return self._weights

    @property
    def has_weights(self) -> bool:
        return self._weights is not None

    def restore_best(self, model, step: int, last_result: dict, report) -> dict:
        """At the end of a finished run with export_best: put the best evaluation's weights back into
        ``model`` (what gets exported) and return its metrics; otherwise ``last_result`` unchanged."""
        if self._weights is None or self.best_step == step:
            return last_result
        self.restore(model)
        from ftstudio.core.events import LogLine
        report(LogLine(f"Exporting the weights of step {self.best_step} (best eval {self.metric} "
                       f"{self.best_value:.4f}), not those of the last step {step}"))
        return dict(self.best_result)

    def restore(self, model) -> None:
        """Copy the best weights back into ``model`` (in place: optimizer and device placement untouched)."""
        if self._weights is None:
            raise RuntimeError("no best weights were kept")
        import torch

        with torch.no_grad():
            for t, saved in zip(_tensors(model), self._weights):
                t.copy_(saved)


def check_host_room(model) -> int:
    """The host RAM the best-weights copy takes (bytes); ConfigError when the host does not have it free."""
    need = sum(t.numel() * t.element_size() for t in _tensors(model))
    try:
        import psutil
        free = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no memory figure on this platform: nothing to check against
        return need
    if need > free:
        raise ConfigError("checkpoint.export_best", f"the copy of the best weights needs {need / 1e9:.2f} GB of "
                          f"host RAM and {free / 1e9:.2f} GB is free; turn export_best off")
    return need


def _tensors(model) -> list:
    """Parameters (tied ones once) and buffers, in a fixed order."""
    return [p for p in model.parameters()] + [b for b in model.buffers()]


def snapshot(model) -> list:
    """A CPU copy of every parameter and buffer (the host RAM the memory plan counts for export_best)."""
    return [t.detach().to("cpu", copy=True) for t in _tensors(model)]
