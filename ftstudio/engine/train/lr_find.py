"""The learning-rate range test (Smith 2015, popularised by fastai's ``lr_find``): train from θ0 for N steps
while the LR grows exponentially from ``start_lr`` to ``end_lr``, record the loss of each step, and stop when
it diverges. The loss falls once the LR is large enough to learn, bottoms out, then explodes; a good peak LR
sits well below the bottom.

It is the trainer itself (:class:`RangeTest` subclasses ``Trainer``): the same model loading, data, optimizer,
precision and loss path, so the curve describes the run the user is about to make. Only four things differ:
the schedule (exponential), the stop rule (divergence), no evaluation and no checkpoint or export: the
weights it reaches are thrown away and the user's model files are never written.

The suggestion rule, stated with every result: **a tenth of the LR at the minimum of the smoothed loss**
(the LR there is already on the edge of instability; a tenth of it still learns fast), clipped to the
fine-tuning range :data:`FINE_TUNE_RANGE`. The steepest descent of the smoothed loss is reported beside it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ftstudio.core.control import Control
from ftstudio.core.events import LogLine, RunFailed
from ftstudio.core.runs import make_run_name
from ftstudio.engine.train.trainer import Trainer

START_LR, END_LR, STEPS = 1e-7, 1e-2, 100
SMOOTHING = 0.9         # EMA of the loss (debiased), so one noisy batch neither ends the test nor sets the minimum
DIVERGE_FACTOR = 4.0    # stop once the smoothed loss is this many times its minimum (fastai's rule)
MIN_POINTS = 10         # no divergence call, and no suggestion, before this many steps
ENOUGH_POINTS = 20      # fewer recorded steps cannot place a minimum: the curve is said to be too short
FINE_TUNE_RANGE = (1e-6, 5e-4)
RULE = ("a tenth of the LR at the minimum of the smoothed loss, clipped to the fine-tuning range "
        f"{FINE_TUNE_RANGE[0]:.0e}–{FINE_TUNE_RANGE[1]:.0e}")


@dataclass
class LRFindResult:
    status: str                          # "diverged", "finished" (reached end_lr), "stopped" (the user) or "failed"
    steps: int
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggested_lr: float | None = None
    rule: str = RULE
    min_loss_lr: float | None = None     # the LR at the smoothed minimum
    steepest_lr: float | None = None     # the LR of the steepest descent
    clipped: bool = False
    run_dir: str = ""
    plot: str | None = None
    reason: str = ""                     # why there is no suggestion, or why it failed

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "plot": self.plot, "steps": self.steps, "status": self.status,
                "rule": self.rule, "min_loss_lr": self.min_loss_lr, "steepest_lr": self.steepest_lr,
                "run_dir": self.run_dir, "reason": self.reason}


# -- the curve and its rule: pure functions ------------------------------------------------------------------
def lr_at(i: int, steps: int, start_lr: float = START_LR, end_lr: float = END_LR) -> float:
    """The LR of step i (0-based): start_lr · (end_lr/start_lr)^(i/(steps−1))."""
    return start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (Adam's bias correction: the first values are not pulled to 0)."""
    out, avg = [], 0.0
    for i, x in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * x
        out.append(avg / (1 - beta ** i))
    return out


def diverged(smoothed: list[float], factor: float = DIVERGE_FACTOR) -> bool:
    if not smoothed or not math.isfinite(smoothed[-1]):
        return bool(smoothed)
    return len(smoothed) >= MIN_POINTS and smoothed[-1] > factor * min(smoothed)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None, float | None, bool]:
    """(suggested LR, LR at the minimum, LR of the steepest descent, clipped) by :data:`RULE`."""
    pts = [(lr, y) for lr, y in zip(lrs, smoothed) if math.isfinite(y)]
    if len(pts) < MIN_POINTS:
        return None, None, None, False
    i_min = min(range(len(pts)), key=lambda i: pts[i][1])
    min_lr = pts[i_min][0]
    # Steepest descent: the most negative slope of the loss against log LR, before the minimum.
    slopes = [(pts[i + 1][1] - pts[i][1]) / math.log(pts[i + 1][0] / pts[i][0]) for i in range(max(1, i_min))
              if i + 1 < len(pts)]
    steepest = pts[min(range(len(slopes)), key=slopes.__getitem__)][0] if slopes else None
    raw = min_lr / 10
    lo, hi = FINE_TUNE_RANGE
    lr = min(hi, max(lo, raw))
    return lr, min_lr, steepest, lr != raw


def unsupported(lrs: list[float], smoothed: list[float], status: str, suggested: float | None) -> str | None:
    """Why this curve cannot support a learning rate, with what would (None when it can). A number picked from
    a curve too short to have a bottom, or whose lowest loss sits at an end of the range, is the range's edge,
    not the model's answer (a 10-step test once "suggested" the floor 1e-6 from losses between 0.79 and 2.55)."""
    pts = [(lr, y) for lr, y in zip(lrs, smoothed) if math.isfinite(y)]
    n = len(pts)
    if n < ENOUGH_POINTS:
        return (f"only {n} steps were recorded: too few to locate the loss's minimum. Run the test with at least "
                f"{ENOUGH_POINTS * 3} steps")
    i_min = min(range(n), key=lambda i: pts[i][1])
    edge = max(2, n // 10)
    if i_min >= n - edge and status != "diverged":
        return (f"the loss was still falling at the end of the range (lowest at the last LRs tried, "
                f"{pts[i_min][0]:.1e}): the minimum lies beyond it. Run with more steps or a higher end LR")
    if i_min < edge:
        return (f"the lowest loss is at the start of the range ({pts[i_min][0]:.1e}): the loss never fell, so the "
                "curve shows no LR that learns. Start the range lower, run more steps, or check the data")
    lo = FINE_TUNE_RANGE[0]
    if suggested is not None and suggested <= lo and pts[i_min][0] / 10 < lo:
        return (f"the rule gives {pts[i_min][0] / 10:.1e}, below the fine-tuning range ({lo:.0e} is its floor): "
                "the curve does not point at a usable LR. Run more steps, or keep the preset's LR")
    return None


def range_config(cfg, steps: int = STEPS, end_lr: float = END_LR):
    """The run config of the test: the user's, with the LR its peak, no warmup, no evaluation, no export."""
    name = f"lr-find-{make_run_name(cfg.model.source)}"
    return cfg.replace(lr=end_lr, max_steps=steps, log_every=1, eval_every=0, export=False, checkpoint_every=0,
                       early_stop_patience=0, export_best=False, retention_eval=False, drift_every=0,
                       nonfinite="skip", run_name=name, memory_snapshot_every=max(steps, 1))


class _RangeControl(Control):
    """The user's stop and pause, plus the test's own stop when the loss diverges."""

    def __init__(self, user: Control | None):
        super().__init__()
        self.user = user or Control()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set() or self.user.stop_requested

    @property
    def paused(self) -> bool:
        return self.user.paused

    def wait_while_paused(self, poll_s: float = 0.1) -> None:
        self.user.wait_while_paused(poll_s)

    def take_save_request(self) -> bool:
        return False


class RangeTest(Trainer):
    """``Trainer`` with the range test's schedule, stop rule and ends (see the module docstring)."""

    def __init__(self, config, reporter=None, control: Control | None = None, *, start_lr: float = START_LR,
                 end_lr: float = END_LR, diverge_factor: float = DIVERGE_FACTOR):
        self.range_control = _RangeControl(control)
        super().__init__(config, reporter, self.range_control)
        self.start_lr, self.end_lr, self.diverge_factor = start_lr, end_lr, diverge_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False

    def _build_scheduler(self, total_steps: int):
        from torch.optim.lr_scheduler import LambdaLR
        # The optimizer's LR is end_lr (range_config); step i runs at lr_at(i): layer-wise rates keep their ratios.
        ratio = self.start_lr / self.end_lr
        return LambdaLR(self.optimizer, lambda i: ratio * (self.end_lr / self.start_lr) ** (i / max(1, total_steps - 1)))

    def _periodic(self, model, prepared, device, numerics, scaler, sched) -> None:
        # log_every is 1: _last_loss is this step's loss.
        self._record(lr_at(self.step - 1, sched.total_steps, self.start_lr, self.end_lr), self._last_loss)

    def _handle_nonfinite(self, what: str, skips: int, model, scaler) -> None:
        # A NaN/inf loss or gradient at a high LR is the divergence the test looks for, not an error.
        self._record(lr_at(self.step, self.cfg.train.max_steps, self.start_lr, self.end_lr), float("inf"))

    def _record(self, lr: float, loss: float | None) -> None:
        if loss is None or self.diverged:
            return
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed = smooth(self.losses) if math.isfinite(loss) else self.smoothed + [float("inf")]
        if diverged(self.smoothed, self.diverge_factor):
            self.diverged = True
            self.report(LogLine(f"The loss diverged at LR {lr:.2e} (step {len(self.lrs)}): the range test ends"))
            self.range_control._stop.set()

    def _evaluate(self, model, prepared, device, numerics, task) -> dict:
        return {}   # the test's weights are thrown away: nothing to evaluate

    def _save_checkpoint(self, model, scaler, **_) -> None:
        pass        # nor to keep


def lr_find(cfg, reporter=None, control: Control | None = None, *, steps: int = STEPS, start_lr: float = START_LR,
            end_lr: float = END_LR, diverge_factor: float = DIVERGE_FACTOR, check_plan: bool = True) -> LRFindResult:
    """Run the range test for ``cfg`` and return the curve and the suggestion; writes ``lr_find.json`` and
    ``lr_find.png`` (when matplotlib is installed) in the test's own run folder under ``train.output``."""
    report = reporter or (lambda e: None)
    if not 0 < start_lr < end_lr:
        from ftstudio.core.errors import ConfigError
        raise ConfigError("lr-find", f"start LR {start_lr:g} must be positive and below the end LR {end_lr:g}")
    test_cfg = range_config(cfg, steps, end_lr)
    if check_plan:
        from ftstudio.engine.train.preflight import check_memory_plan
        report(LogLine(check_memory_plan(test_cfg, "the LR range test").message))
    test = RangeTest(test_cfg, report, control, start_lr=start_lr, end_lr=end_lr, diverge_factor=diverge_factor)
    outcome = test.run()
    failed = isinstance(outcome, RunFailed)
    user_stop = control is not None and control.stop_requested
    status = ("failed" if failed else "stopped" if user_stop else "diverged" if test.diverged else "finished")
    result = LRFindResult(status=status, steps=len(test.lrs), lrs=test.lrs, losses=test.losses,
                          smoothed=test.smoothed, run_dir=str(test.run_dir or ""))
    if failed:
        result.reason = outcome.reason
        return result
    result.suggested_lr, result.min_loss_lr, result.steepest_lr, result.clipped = suggest(test.lrs, test.smoothed)
    why = unsupported(test.lrs, test.smoothed, status, result.suggested_lr)
    if why:  # a caveat and what would answer, instead of a number the curve cannot support
        result.suggested_lr, result.clipped = None, False
        result.reason = why
    if test.run_dir is not None:
        _write_outputs(result, Path(test.run_dir), report)
    return result


def _write_outputs(result: LRFindResult, run_dir: Path, report) -> None:
    from ftstudio.engine.plots import save_lr_find_plot
    try:
        result.plot = save_lr_find_plot(run_dir / "lr_find.png", result)
    except ImportError:
        report(LogLine("No plot: matplotlib is not installed (pip install 'ftstudio[plot]'); the curve is in "
                       f"{run_dir / 'lr_find.json'}", "warning"))
    (run_dir / "lr_find.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
