"""The monitor: live plots of a run (train/eval loss, LR, gradient norm, tokens/s, memory), a progress bar with
ETA and a log view.

Events arrive in a deque filled by the training thread; a ~10 Hz QTimer drains it into plain lists and calls
``setData`` once per curve (downsampling and clip-to-view on), so the cost per redraw does not grow with the
step rate (CONVENTIONS "Live plots are pulled at a fixed rate").
"""
from __future__ import annotations

import collections
import time

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (QPlainTextEdit, QProgressBar, QSplitter, QVBoxLayout,
                               QWidget)

from ftstudio.core import events as ev

from .class_figures_view import ClassFiguresView, beside
from .engine_access import fmt_duration
from .load_progress import LoadBar
from .plot_parts import BytesAxis, ScientificAxis, Series, TwinAxis, keyed_title, make_plot  # noqa: F401 (BytesAxis: tests)
from .fit import PlotGrid, scrolled
from .forgetting_views import DriftStrip
from .theme import COLORS

REDRAW_MS = 100
MEM_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#1f77b4", "#ff7f0e", "#2ca02c")


_EVAL_SHOWN = {"step", "loss", "perplexity", "accuracy", "macro_f1", "best", "majority_baseline", "majority_class",
               "per_class", "collapsed", "objective"}   # shown by name above; others by _other_figures


def _other_figures(e) -> list[tuple[str, object]]:
    """Figures an evaluation carries beyond those drawn (a newer engine's baseline or per-class figures): said
    in the log line by their own names rather than dropped."""
    import dataclasses
    return [(f.name, getattr(e, f.name)) for f in dataclasses.fields(e)
            if f.name not in _EVAL_SHOWN and getattr(e, f.name) not in (None, {}, [])]


def _fmt_figure(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt_figure(x)}" for k, x in list(v.items())[:8]) + (
            ", …}" if len(v) > 8 else "}")
    return str(v)


class Monitor(QWidget):
    """Turns run events into plots, progress and log lines."""

    eventsProcessed = Signal(int)  # how many events the last drain handled (tests wait on it)
    memoryMeasured = Signal(object)  # MemorySnapshot, for the memory bar
    runStarted = Signal(object)  # RunStarted

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("monitor")
        self.source: collections.deque | None = None
        self.total_steps = 0
        self.step = 0
        self.last_eta: float | None = None
        self.started: ev.RunStarted | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.finishing = False
        self._t0 = time.monotonic()
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self.drain)

    def _build(self) -> None:
        self.loss_plot = make_plot("Loss", "loss", "lossPlot")
        self.lr_plot = make_plot("Learning rate", "lr", "lrPlot", left_axis=ScientificAxis("left"))
        self.grad_plot = make_plot("Gradient norm", "norm", "gradPlot")
        self.tps_plot = make_plot("Throughput", "tokens/s", "tokensPlot")
        self.mem_plot = make_plot("Memory (measured)", "memory", "memoryPlot", left_axis=BytesAxis("left"))
        mem_axis = self.mem_plot.getPlotItem().getAxis("left")
        mem_axis.setWidth(62)
        mem_axis.enableAutoSIPrefix(False)  # the ticks carry their unit: no second "(x1e+09)" scale on the label
        self.train = Series(self.loss_plot, COLORS["train"], "train")
        self.eval = Series(self.loss_plot, COLORS["eval"], "eval", symbol="o")
        self.retention = Series(self.loss_plot, COLORS["retention"], "general text (forgetting)", symbol="t")
        # a classifier's validation accuracy and macro-F1 on a 0–1 axis at the right of the loss plot
        self.metric_axis = TwinAxis(self.loss_plot, "acc / F1", (0.0, 1.0))
        self.accuracy = Series(self.metric_axis, COLORS["accuracy"], "acc", symbol="s")  # short: the key is one line
        self.macro_f1 = Series(self.metric_axis, COLORS["macro_f1"], "F1", symbol="d")
        # dpo / simpo: the training pairs' preference accuracy beside the held-out one ("acc")
        self.pref_acc = Series(self.metric_axis, COLORS["macro_f1"], "train acc")  # F1 is not shown beside it
        self.metric_axis.set_shown(False)  # shown once a run reports them
        self._loss_key()
        self.drift = DriftStrip()
        self.lr = Series(self.lr_plot, COLORS["lr"], "lr")
        self.grad = Series(self.grad_plot, COLORS["grad"], "grad norm")
        self.tps = Series(self.tps_plot, COLORS["tps"], "tokens/s")
        self.mem = Series(self.mem_plot, COLORS["mem"], "tensors + allocator", symbol="o")
        self.mem_nvml = Series(self.mem_plot, COLORS["measured"], "NVML", symbol="t")
        # The best evaluation so far (by eval.metric; what export_best exports): one star on the eval curve.
        self.best = Series(self.loss_plot, COLORS["eval"], "best evaluation", symbol="star")
        self.best.curve.setPen(None)
        self.best.curve.setSymbolSize(16)
        self.series = [self.train, self.eval, self.retention, self.lr, self.grad, self.tps, self.mem, self.mem_nvml,
                       self.best]
        self.mem_by_device: dict[str, tuple[Series, Series]] = {}  # a multi-GPU run: one pair of curves per card
        self.series += [self.accuracy, self.macro_f1, self.pref_acc]

        # Two columns (three on a wide screen, one when narrow: stacked), each plot tall enough for its ticks;
        # the grid scrolls when the height does not hold them all (a 1280×720 screen at 100 %, 1080p at 150 %).
        self.plot_grid = PlotGrid([self.loss_plot, self.drift, self.lr_plot, self.grad_plot, self.tps_plot,
                                   self.mem_plot])
        self.plot_grid.setObjectName("plotGrid")
        plots = scrolled(self.plot_grid)
        plots.setObjectName("plotScroll")

        self.progress = QProgressBar()
        self.progress.setObjectName("progressBar")
        self.progress.setFormat("idle")
        self.progress.setTextVisible(True)
        self.eta_text = ""  # the ETA, elapsed time and throughput live in the bar's own text (never clipped)
        self.load_bar = LoadBar(self.progress)  # before the first step: the load's seconds, or a GGUF's tensors

        self.log = QPlainTextEdit()
        self.log.setObjectName("logView")
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setPlaceholderText("Run log: events, evaluations, checkpoints and warnings appear here.")

        self.log.setMinimumHeight(48)
        split = QSplitter(Qt.Orientation.Vertical)
        split.setChildrenCollapsible(False)
        split.addWidget(plots)
        self.class_figures = ClassFiguresView()  # a classifier's per-class figures, beside the log
        split.addWidget(beside(self.log, self.class_figures))
        split.setStretchFactor(0, 5)
        split.setStretchFactor(1, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.progress)
        lay.addWidget(split, 1)

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, source: collections.deque) -> None:
        """Start pulling events from ``source`` (the run controller's deque)."""
        self.reset()
        self.source = source
        self.timer.start()

    def detach(self) -> None:
        """Drain what is left and stop the timer (the run has ended)."""
        self.drain()
        self.timer.stop()
        self.source = None

    def reset(self) -> None:
        for pair in list(self.mem_by_device.values())[1:]:  # the extra cards' curves of the last run
            for extra in pair:
                self.mem_plot.removeItem(extra.curve)
                self.series.remove(extra)
        self.mem_by_device.clear()
        self._rename(self.mem, "tensors + allocator")
        self._rename(self.mem_nvml, "NVML")
        for s in self.series:
            s.clear()
        self.drift.clear_data()
        self.metric_axis.set_shown(False)
        self._loss_key()
        self._mem_title()
        self.counts.clear()
        self.total_steps = self.step = 0
        self.finishing = False
        self.last_eta = None
        self.started = None
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.eta_text = ""
        self.load_bar.reset()
        self.log.clear()
        self.class_figures.clear()
        self._t0 = time.monotonic()

    def set_finishing(self) -> None:
        """The window was closed mid-run: the bar says the run is finishing its step and saving until it ends."""
        self.finishing = True
        self.progress.setFormat("finishing the step and saving…")

    def append_log(self, text: str, level: str = "info") -> None:
        prefix = {"warning": "⚠ ", "error": "✖ "}.get(level, "")
        self.log.appendPlainText(f"[{time.strftime('%H:%M:%S')}] {prefix}{text}")
        self.log.moveCursor(QTextCursor.MoveOperation.End)

    # -- the 10 Hz pull ------------------------------------------------------------------------
    @Slot()
    def drain(self) -> None:
        n = 0
        src = self.source
        while src:
            try:
                e = src.popleft()
            except IndexError:
                break
            self.handle(e)
            n += 1
        self._flush()
        if self.source is not None and self.started is None and not self.finishing:
            self.load_bar.waiting(time.monotonic() - self._t0)  # the load: seconds, or tensors where counted
        if n:
            self.eventsProcessed.emit(n)

    def _flush(self) -> None:
        mem_curves = [s for pair in self.mem_by_device.values() for s in pair] or [self.mem, self.mem_nvml]
        grew = any(s.dirty for s in mem_curves)
        for s in self.series:
            s.flush()
        self.drift.flush()
        if grew:  # memory from zero: a flat line must not be blown up to its last digits
            top = max([y for s in mem_curves for y in s.y] + [1.0])
            self.mem_plot.setYRange(0, top * 1.15, padding=0)
            self._mem_title()

    def handle(self, e: ev.Event) -> None:
        self.counts[e.kind] += 1
        if isinstance(e, ev.StepMetrics):
            self._on_step(e)
        elif isinstance(e, ev.EvalMetrics):
            self.eval.append(e.step, e.loss)
            if e.accuracy is not None or e.macro_f1 is not None:
                self.accuracy.append(e.step, e.accuracy)
                self.macro_f1.append(e.step, e.macro_f1)
                if not self.metric_axis.shown:
                    self.metric_axis.set_shown(True)
                    self._loss_key()
            self.class_figures.show_figures(e.to_dict(), e.step)
            if e.best:
                self.best.x, self.best.y, self.best.dirty = [e.step], [e.loss], True
            extra = "".join(f", {k} {v:.4g}" for k, v in (("perplexity", e.perplexity), ("accuracy", e.accuracy),
                                                            ("majority-class baseline", e.majority_baseline),
                                                            ("macro F1", e.macro_f1),
                                                            ("reward margin", e.objective.get("rewards/margins")))
                            if v is not None)
            extra += "".join(f", {k.replace('_', ' ')} {_fmt_figure(v)}" for k, v in _other_figures(e))
            self.append_log(f"eval at step {e.step}: loss {e.loss:.4f}{extra}")
            if e.collapsed:
                self.append_log(f"warning: {e.collapsed}")
        elif isinstance(e, ev.RetentionMetrics):
            self.retention.append(e.step, e.loss)
            if len(self.retention.y) == 1 and self.metric_axis.shown:
                self._loss_key()
            self.append_log(f"general text at step {e.step}: loss {e.loss:.4f}, perplexity {e.perplexity:.2f}")
        elif isinstance(e, ev.DriftMetrics):
            self.drift.add(e.step, e.layers)
            self.append_log(f"drift ‖θ−θ0‖/‖θ0‖ at step {e.step}: {e.total:.3g}")
        elif isinstance(e, ev.MemorySnapshot):
            self._on_memory(e)
        elif isinstance(e, ev.RunStarted):
            self._on_started(e)
        elif isinstance(e, ev.CheckpointSaved):
            self.append_log(f"checkpoint saved at step {e.step}: {e.path}")
        elif isinstance(e, ev.NonFiniteStep):
            self.append_log(f"non-finite {e.what} at step {e.step}: {e.action}. {e.advice}", "warning")
        elif isinstance(e, ev.LoadProgress):
            self.load_bar.show(e)
        elif isinstance(e, ev.LogLine):
            self.append_log(e.message, e.level)
        elif isinstance(e, ev.RunFinished):
            self._on_finished(e)
        elif isinstance(e, ev.RunFailed):
            self.progress.setFormat("failed")
            self.append_log(f"run failed at step {e.step}: {e.reason}" + (f" — {e.advice}" if e.advice else ""),
                            "error")

    def _on_started(self, e: ev.RunStarted) -> None:
        self.started = e
        self.total_steps = max(1, int(e.total_steps or 1))
        self.progress.setRange(0, self.total_steps)
        self.progress.setValue(e.resumed_from_step)
        self.progress.setFormat("step %v / %m")
        resumed = f", resumed from step {e.resumed_from_step}" if e.resumed_from_step else ""
        if e.resumed_from_step and (n := max(s.drop_after(e.resumed_from_step) for s in self.series)):
            self.append_log(f"{n} points past step {e.resumed_from_step} are redrawn by the resume", "warning")
        self.append_log(f"run started: {e.model} ({e.params:,} parameters, task {e.task}) on {e.device}, "
                        f"{e.precision}; {e.total_steps} steps over {e.train_rows} rows{resumed}. Folder: {e.run_dir}")
        self.runStarted.emit(e)

    def _on_step(self, e: ev.StepMetrics) -> None:
        self.step = e.step
        self.train.append(e.step, e.loss)
        self.lr.append(e.step, e.lr)
        self.grad.append(e.step, e.grad_norm)
        self.tps.append(e.step, e.tokens_per_s)
        if "rewards/accuracies" in e.objective:
            self.pref_acc.append(e.step, e.objective["rewards/accuracies"])
            if len(self.pref_acc.y) == 1:
                self.metric_axis.set_shown(True)
                self._loss_key()
        if e.total_steps and e.total_steps != self.total_steps:
            self.total_steps = e.total_steps
            self.progress.setRange(0, e.total_steps)
        self.progress.setValue(min(e.step, self.progress.maximum()))
        self.last_eta = e.eta_s
        self.eta_text = (f"epoch {e.epoch:.2f} · elapsed {fmt_duration(e.elapsed_s)} · ETA {fmt_duration(e.eta_s)} · "
                         f"{e.tokens_per_s:,.0f} tokens/s")
        self.progress.setFormat(("finishing the step and saving… · " if self.finishing else "step %v / %m · ")
                                + self.eta_text)

    def _mem_series(self, device: str) -> tuple[Series, Series]:
        """The curves of one device: the first device uses the plot's own pair, each further card gets one."""
        if device not in self.mem_by_device:
            if not self.mem_by_device:
                self.mem_by_device[device] = (self.mem, self.mem_nvml)
            else:
                k = len(self.mem_by_device)
                color = MEM_COLORS[k % len(MEM_COLORS)]
                pair = (Series(self.mem_plot, color, f"{device} tensors + allocator", symbol="o"),
                        Series(self.mem_plot, color, f"{device} NVML", symbol="t"))
                self.series += list(pair)
                self.mem_by_device[device] = pair
            if len(self.mem_by_device) == 2:  # name the first pair by its device too, now that there are several
                first_dev, (a, b) = next(iter(self.mem_by_device.items()))
                self._rename(a, f"{first_dev} tensors + allocator")
                self._rename(b, f"{first_dev} NVML")
        return self.mem_by_device[device]

    def _loss_key(self) -> None:
        """The curves' key in the title; a classifier's accuracy and macro-F1 (right axis) join it once shown."""
        shown = [self.train, self.eval]
        if self.metric_axis.shown:  # a classifier: its metrics (general text only if measured: the title is one line)
            shown += ([self.retention] if self.retention.y else []) + [self.accuracy] + (
                [self.pref_acc] if self.pref_acc.y else [self.macro_f1])   # dpo: train and held-out accuracy
        else:
            shown.append(self.retention)
        keyed_title(self.loss_plot, "Loss", shown)

    def _rename(self, series: Series, name: str) -> None:
        series.curve.opts["name"] = name
        self._mem_title()

    def _mem_title(self) -> None:
        curves = [s for pair in self.mem_by_device.values() for s in pair] or [self.mem, self.mem_nvml]
        keyed_title(self.mem_plot, "Memory (measured)", [s for s in curves if s.y])

    def _on_memory(self, e: ev.MemorySnapshot) -> None:
        tensors = (e.weights or 0) + (e.gradients or 0) + (e.optimizer or 0) + (e.activations or 0)
        mem, nvml = self._mem_series(e.device)
        mem.append(e.step, max(tensors, e.allocated_peak or 0))
        if e.nvml_used:
            nvml.append(e.step, e.nvml_used)
        self.memoryMeasured.emit(e)

    def _on_finished(self, e: ev.RunFinished) -> None:
        if e.status == "finished":
            self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(f"{e.status} after {e.steps} steps")
        loss = f"{e.train_loss:.4f} ({ev.train_loss_label(e)})" if e.train_loss is not None else "–"
        evals = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (e.eval or {}).items()
                          if v is not None and k not in ("per_class", "collapsed"))
        self.append_log(f"run {e.status} after {e.steps} steps in {fmt_duration(e.elapsed_s)}: train loss {loss}"
                        + (f"; eval {evals}" if evals else "")
                        + (f". Model: {e.final_model}" if e.final_model else ""))
        self.class_figures.show_figures(e.eval or {}, e.steps)
        if (e.eval or {}).get("per_class"):
            self.append_log("per class: " + "; ".join(ev.per_class_text(e.eval["per_class"])))
        if (e.eval or {}).get("collapsed"):
            self.append_log(f"warning: {e.eval['collapsed']}")
        if e.stop_reason:
            self.append_log(e.stop_reason)

    def show_history(self, events: list[dict]) -> None:
        """Fill the plots from a finished run's metrics.jsonl (Runs tab → Open)."""
        self.reset()
        for d in events:
            try:
                self.handle(ev.event_from_dict(d))
            except (KeyError, TypeError, ValueError):
                continue  # a line from a newer/older version: skip, the rest still draws
        self._flush()
