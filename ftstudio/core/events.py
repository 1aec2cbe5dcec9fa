"""Events the engine reports while it runs. Plain dataclasses: the GUI worker, the console, the
metrics.jsonl writer and tests all receive the same objects through a ``reporter`` callable.

``to_dict()`` gives the JSON line (``{"event": "step", ...}``); :func:`event_from_dict` turns a JSON line
back into an event, which is how the multi-GPU subprocess's rank 0 talks to the GUI.
Pure Python: no torch, no Qt.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol


@dataclass
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = {"event": self.kind}
        for k, v in dataclasses.asdict(self).items():
            d[k] = None if isinstance(v, float) and not math.isfinite(v) and k != "loss" else v
        return d


@dataclass
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str
    model: str
    task: str
    device: str
    precision: str
    params: int
    total_steps: int
    train_rows: int
    val_rows: int
    resumed_from_step: int = 0
    labels: list[str] | None = None


@dataclass
class StepMetrics(Event):
    kind: ClassVar[str] = "step"
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_s: float
    epoch: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    total_steps: int = 0
    objective: dict[str, float] = field(default_factory=dict)  # dpo/simpo: rewards, margins, accuracy, log-probs


@dataclass
class EvalMetrics(Event):
    kind: ClassVar[str] = "eval"
    step: int
    loss: float
    perplexity: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    best: bool = False  # the best evaluation so far by eval.metric (the monitor marks it)
    # A classifier's accuracy beside what it means: the share of the most frequent true class (what always
    # answering it scores), per-class {"precision", "recall", "f1", "support", "predicted"} by label name, and a warning
    # line when nearly every prediction is one class (None when not).
    majority_baseline: float | None = None
    majority_class: str | None = None
    per_class: dict[str, dict] | None = None
    collapsed: str | None = None
    objective: dict[str, float] = field(default_factory=dict)  # dpo/simpo: rewards, margins, log-probs


@dataclass
class RetentionMetrics(Event):
    """Loss and perplexity on general text: the forgetting curve."""
    kind: ClassVar[str] = "retention"
    step: int
    loss: float
    perplexity: float


@dataclass
class DriftMetrics(Event):
    """Relative distance from the pre-trained weights per layer group, ‖θ−θ0‖/‖θ0‖."""
    kind: ClassVar[str] = "drift"
    step: int
    layers: dict[str, float] = field(default_factory=dict)
    total: float = 0.0


@dataclass
class MemorySnapshot(Event):
    """Measured memory on one device, in bytes. Fields that a device cannot measure are None."""
    kind: ClassVar[str] = "memory"
    step: int
    device: str
    weights: int
    gradients: int
    optimizer: int
    activations: int | None = None
    allocated_peak: int | None = None
    reserved: int | None = None
    nvml_used: int | None = None
    total: int | None = None
    planned_peak: int | None = None                # the memory plan's allocator peak for this run (train/memory_log.py)
    planned_phases: dict | None = None             # the plan's peak of each phase of a step, bytes
    measured_phases: dict | None = None            # measured peak of each phase since the last snapshot, bytes:
    #   the allocator's on CUDA, the process's resident set (RSS) on the CPU (train/memory_log.PhaseMeter)


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass
class NonFiniteStep(Event):
    kind: ClassVar[str] = "nonfinite"
    step: int
    what: str  # "loss" or "gradient"
    action: str  # "skipped", "stopped", "rolled back"
    advice: str = ""


@dataclass
class LoadProgress(Event):
    """Loading the model, where it can be counted: a GGUF's tensors de-quantised so far, of all (the GUI's bar)."""
    kind: ClassVar[str] = "load_progress"
    what: str
    done: int
    total: int
    elapsed_s: float = 0.0


@dataclass
class LogLine(Event):
    kind: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass
class RunFinished(Event):
    kind: ClassVar[str] = "finished"
    status: str  # "finished" or "stopped"
    steps: int
    train_loss: float | None  # the mean step loss over the last train_loss_steps steps (figures.tail_steps)
    eval: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""
    final_model: str | None = None
    elapsed_s: float = 0.0
    stop_reason: str = ""  # why a finished run ended before its last step (early stopping), else ""
    best_step: int | None = None  # the step of the best evaluation (what final/ holds with export_best)
    train_loss_steps: int = 0  # how many last steps train_loss averages (0: the last logged loss)


@dataclass
class RunFailed(Event):
    kind: ClassVar[str] = "failed"
    reason: str
    advice: str = ""
    error_type: str = ""
    step: int = 0
    output_dir: str = ""


def train_loss_label(event: RunFinished) -> str:
    """What the end-of-run train loss is, in words (the console, the window and the JSON summary say it)."""
    n = getattr(event, "train_loss_steps", 0)
    return f"mean of the last {n} steps" if n > 1 else ("the last step" if n == 1 else "the last logged steps")


def per_class_text(per_class: dict[str, dict]) -> list[str]:
    """Each class as 'name: precision P, recall R (n rows)'; '–' for a precision of a class never predicted."""
    def pct(x):
        return "–" if x is None else f"{x:.1%}"
    return [f"{name}: precision {pct(d.get('precision'))}, recall {pct(d.get('recall'))} "
            f"({d.get('support', 0)} row{'' if d.get('support') == 1 else 's'})" for name, d in per_class.items()]


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (RunStarted, StepMetrics, EvalMetrics, RetentionMetrics, DriftMetrics,
                              MemorySnapshot, CheckpointSaved, NonFiniteStep, LoadProgress, LogLine, RunFinished,
                              RunFailed)
}


def event_from_dict(d: dict[str, Any]) -> Event:
    d = dict(d)
    cls = EVENT_TYPES[d.pop("event")]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


Reporter = Callable[[Event], None]


class Sink(Protocol):
    def __call__(self, event: Event) -> None: ...


class Fanout:
    """A reporter that hands every event to several sinks."""

    def __init__(self, *sinks: Reporter):
        self.sinks = [s for s in sinks if s is not None]

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)
