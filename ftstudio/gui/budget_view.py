"""The Compare tab's "Forgetting budget" view: the weights between θ0 and θ* (θ(α) = (1−α)·θ0 + α·θ*) scored
over a grid of α, the task metric (left axis) and the retention loss on general text (right axis) on one plot,
a slider over the scored α that shows every value at that α, and "Export at α".

The curve comes from the run's newest saved sweep (RUN/interpolation/sweep-*.json, `ftstudio interpolate --sweep`'s
record), or from a sweep run here on a background thread (``ToolThread``: the engine's ``sweep_alphas``, Stop
asked before each α, the points scored so far kept and saved). Export writes θ(α) into a folder the user chooses
(``write_interpolated``, streamed tensor by tensor) on the same kind of thread. The α picked and the settings it
was picked under are saved in RUN/interpolation/choice.json, and shown again when the run is reopened.
"""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import (QCheckBox, QDoubleSpinBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSlider, QVBoxLayout)

from .engine_access import EngineMissing, engine
from .plot_parts import TwinAxis
from .theme import COLORS
from .tool_thread import run_stop

DEFAULT_ALPHAS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def parse_alphas(text: str) -> list[float]:
    """"0,0.5,1" → [0.0, 0.5, 1.0]; a ValueError names the piece that is not a number."""
    out = []
    for piece in text.split(","):
        if piece.strip():
            try:
                out.append(float(piece))
            except ValueError:
                raise ValueError(f"α grid: {piece.strip()!r} is not a number (give e.g. {DEFAULT_ALPHAS})") from None
    return out


def point_text(point: dict, record: dict) -> str:
    """Everything measured at one α, as one line."""
    parts = [f"<b>α = {point['alpha']:g}</b>"]
    if point.get("task") is not None:
        kept = point.get("task_gain_kept")
        parts.append(f"{record.get('task_metric', 'task')} {point['task']:.4f}"
                     + (f" ({kept:.0%} of the task gain kept)" if kept is not None else ""))
    if point.get("retention") is not None:
        rec = point.get("retention_recovered")
        parts.append(f"retention loss {point['retention']:.4f}"
                     + (f" ({rec:.0%} of the forgetting taken back)" if rec is not None else ""))
    for name, value in (point.get("benchmarks") or {}).items():
        parts.append(f"{name} {value:.4f}")
    return " · ".join(parts)


class ForgettingBudgetView(QGroupBox):
    """``record``: the sweep shown; ``alpha``: the α the slider picks (None without a sweep)."""

    def __init__(self, parent=None):
        super().__init__("Forgetting budget: the weights between the base model (α = 0) and the fine-tune (α = 1)",
                         parent)
        self.setObjectName("forgettingBudgetView")
        self.run_dir: str | None = None
        self.record: dict | None = None
        self.choice: dict | None = None
        self.choose_folder = self._ask_folder  # replaced in tests (a file dialog cannot be clicked offscreen)
        self.bench_settings = None  # a callable giving BenchSettings (the Benchmarks view's), see use_benchmarks
        self._job_kind = ""
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("α grid:"))
        self.alphas = QLineEdit(DEFAULT_ALPHAS)
        self.alphas.setToolTip("The α to score, separated by commas (0 and 1 are needed for the rule)")
        row.addWidget(self.alphas, 2)
        self.budget = QDoubleSpinBox()
        self.budget.setRange(0.0, 100.0)
        self.budget.setDecimals(3)
        self.budget.setSingleStep(0.05)
        self.budget.setSpecialValueText("budget: half the fine-tune's increase")
        self.budget.setPrefix("budget ")
        self.budget.setSuffix(" nats")
        self.budget.setToolTip("The rule picks the largest α whose retention loss stays within this many nats of "
                               "the base model's (0: half of what the fine-tune added)")
        row.addWidget(self.budget)
        self.with_bench = QCheckBox("+ benchmarks")
        self.with_bench.setToolTip("Also score each α on the harness tasks set in the Benchmarks view (slower)")
        self.with_bench.setEnabled(False)   # until a provider of benchmark settings is set (the Compare tab's)
        row.addWidget(self.with_bench)
        run_stop(self, row, "Sweep α", self.start_sweep, ("sweepAlphaButton", "sweepStopButton"))
        self.sweep_button = self.run_button
        lay.addLayout(row)
        self.status = QLabel("Open a finished run to see its α sweep, or sweep it here.")
        self.status.setWordWrap(True)
        self.status.setObjectName("budgetStatus")
        lay.addWidget(self.status)

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("budgetPlot")
        self.plot.setMinimumHeight(200)
        self.plot.setMouseEnabled(x=False, y=False)
        pi = self.plot.getPlotItem()
        pi.hideButtons()
        pi.setLabel("bottom", "α (0: base model θ0, 1: fine-tuned θ*)")
        pi.setLabel("left", "task metric", color=COLORS["eval"])
        # kept: its sync is connected as a bound method, which the signal does not keep alive
        self.twin = TwinAxis(self.plot, "retention loss (general text)", (0.0, 1.0), color=COLORS["retention"])
        self.right = self.twin.vb                  # its y range is set from the scored points (``_draw``)
        legend = pi.addLegend(offset=(-5, 5))
        self.task_curve = pi.plot([], [], pen=pg.mkPen(COLORS["eval"], width=2), symbol="o", symbolSize=6,
                                  symbolBrush=COLORS["eval"])
        self.retention_curve = self.twin.plot([], [], pen=pg.mkPen(COLORS["retention"], width=2), symbol="s",
                                         symbolSize=6, symbolBrush=COLORS["retention"])
        legend.addItem(self.task_curve, "task metric (left)")
        legend.addItem(self.retention_curve, "retention loss (right)")
        self.cursor = pg.InfiniteLine(angle=90, pen=pg.mkPen("#d62728", width=1.5))
        self.chosen_line = pg.InfiniteLine(angle=90, pen=pg.mkPen(COLORS["other"], width=1, style=Qt.PenStyle.DashLine),
                                           label="rule's α", labelOpts={"position": 0.92, "color": COLORS["other"]})
        for line in (self.cursor, self.chosen_line):
            line.setVisible(False)
            pi.addItem(line)
        pi.setXRange(0, 1, padding=0.03)
        lay.addWidget(self.plot, 1)

        row = QHBoxLayout()
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("alphaSlider")
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setToolTip("Pick any α the sweep scored: its values are shown below; Export writes θ(α)")
        self.slider.valueChanged.connect(self._slid)
        row.addWidget(self.slider, 3)
        self.export_button = QPushButton("Export at α…")
        self.export_button.setObjectName("exportAlphaButton")
        self.export_button.clicked.connect(self.export)
        row.addWidget(self.export_button)
        lay.addLayout(row)
        self.values = QLabel("")
        self.values.setObjectName("alphaValues")
        self.values.setWordWrap(True)
        lay.addWidget(self.values)
        self.rule = QLabel("")
        self.rule.setWordWrap(True)
        lay.addWidget(self.rule)
        self._enable()

    def use_benchmarks(self, settings) -> None:
        """``settings()``: the harness settings a sweep "+ benchmarks" scores each α with."""
        self.bench_settings = settings
        self.with_bench.setEnabled(settings is not None)

    # -- what is shown -----------------------------------------------------------------------------------------
    @property
    def points(self) -> list[dict]:
        return (self.record or {}).get("points") or []

    @property
    def alpha(self) -> float | None:
        return self.points[self.slider.value()]["alpha"] if self.points else None

    def set_run(self, run_dir: str | None) -> None:
        """Show the run's newest sweep, with the slider at the α saved for it (else the rule's)."""
        self.run_dir, self.record, self.choice = run_dir, None, None
        if run_dir:
            try:
                mod = engine("alpha_sweep", "latest_sweep", "load_choice")
                self.record, self.choice = mod.latest_sweep(run_dir), mod.load_choice(run_dir)
            except EngineMissing as e:
                self.status.setText(str(e))
        self.show_sweep(self.record, (self.choice or {}).get("alpha"))
        if self.record:
            self.status.setText(f"The run's newest α sweep ({self.record.get('created', '')})"
                                + (f"; α = {self.choice['alpha']:g} was chosen" if self.choice else ""))
        elif run_dir:
            self.status.setText("No α sweep in this run yet: press Sweep α (it scores each α on the validation "
                                "split and on general text).")
        self._enable()

    def show_sweep(self, record: dict | None, alpha: float | None = None) -> None:
        self.record = record
        pts = self.points
        task = [(p["alpha"], p["task"]) for p in pts if p.get("task") is not None]
        ret = [(p["alpha"], p["retention"]) for p in pts if p.get("retention") is not None]
        self.task_curve.setData([a for a, _ in task], [v for _, v in task])
        self.retention_curve.setData([a for a, _ in ret], [v for _, v in ret])
        if record:
            self.plot.getPlotItem().setLabel("left", record.get("task_metric", "task metric"), color=COLORS["eval"])
        self.plot.getPlotItem().getAxis("right").setStyle(showValues=bool(ret))
        if ret:
            lo, hi = min(v for _, v in ret), max(v for _, v in ret)
            self.right.setYRange(lo, hi if hi > lo else lo + 1e-6, padding=0.08)
        chosen = (record or {}).get("chosen_alpha")
        self.chosen_line.setVisible(chosen is not None)
        if chosen is not None:
            self.chosen_line.setValue(chosen)
        self.rule.setText(f"<small>{record.get('rule', '')}</small>" if record else "")
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, len(pts) - 1))
        want = alpha if alpha is not None else chosen
        index = min(range(len(pts)), key=lambda i: abs(pts[i]["alpha"] - want)) if pts and want is not None else (
            len(pts) - 1 if pts else 0)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        self._show_point()

    def pick(self, alpha: float) -> None:
        """Move the slider to the scored α nearest ``alpha`` (as the user would)."""
        if self.points:
            self.slider.setValue(min(range(len(self.points)), key=lambda i: abs(self.points[i]["alpha"] - alpha)))

    @Slot(int)
    def _slid(self, _index: int) -> None:
        self._show_point()
        self._save_choice()

    def _show_point(self) -> None:
        pts = self.points
        self.cursor.setVisible(bool(pts))
        self.slider.setEnabled(bool(pts) and not self.job.running)
        if not pts:
            self.values.setText("")
            return
        point = pts[self.slider.value()]
        self.cursor.setValue(point["alpha"])
        self.values.setText(point_text(point, self.record))
        self.export_button.setText(f"Export at α = {point['alpha']:g}…")

    def _save_choice(self, **extra) -> None:
        if not (self.run_dir and self.points):
            return
        try:
            mod = engine("alpha_sweep", "save_choice")
            settings = dict(alphas=[p["alpha"] for p in self.points], retention_budget=self.record.get("retention_budget"),
                            rule_alpha=self.record.get("chosen_alpha"), sweep_created=self.record.get("created"),
                            task_metric=self.record.get("task_metric"))
            if self.choice and self.choice.get("exported_to") and not extra:
                settings["exported_to"], settings["exported_alpha"] = (self.choice["exported_to"],
                                                                       self.choice.get("exported_alpha"))
            settings.update(extra)
            mod.save_choice(self.run_dir, self.alpha, **settings)
            self.choice = dict(settings, alpha=self.alpha)
        except (EngineMissing, OSError) as e:
            self.status.setText(f"could not save the chosen α: {e}")

    # -- jobs --------------------------------------------------------------------------------------------------
    @Slot()
    def start_sweep(self) -> None:
        if not self.run_dir or self.job.running:
            return
        try:
            alphas = parse_alphas(self.alphas.text())
            mod = engine("alpha_sweep", "sweep_alphas")
        except (ValueError, EngineMissing) as e:
            self.status.setText(f"<span style='color:#d62728'>{e}</span>")
            return
        run_dir, budget = self.run_dir, (self.budget.value() or None)
        try:
            bench = self.bench_settings() if (self.with_bench.isChecked() and self.bench_settings) else None
        except EngineMissing as e:
            self.status.setText(str(e))
            return
        self._n_alphas = len(set(alphas))
        self._scored = 0

        def job(emit, control):
            return mod.sweep_alphas(run_dir, alphas, budget=budget, bench=bench, report=emit,
                                    should_stop=lambda: control.stop_requested)

        self._run("sweep", job, f"Loading the fine-tuned model to sweep {self._n_alphas} α…")

    @staticmethod
    def _ask_folder(parent, alpha: float) -> str:
        return QFileDialog.getExistingDirectory(parent, f"Empty folder for θ(α = {alpha:g})")

    @Slot()
    def export(self) -> None:
        if not self.run_dir or self.alpha is None or self.job.running:
            return
        alpha = self.alpha
        folder = self.choose_folder(self, alpha)
        if not folder:
            return
        try:
            mod = engine("forgetting.interpolate", "write_interpolated")
        except EngineMissing as e:
            self.status.setText(str(e))
            return
        run_dir = self.run_dir
        self._run("export", lambda emit, control: mod.write_interpolated(run_dir, alpha, folder),
                  f"Writing θ(α = {alpha:g}) to {folder}, tensor by tensor…")

    def _run(self, kind: str, job, text: str) -> None:
        self._job_kind = kind
        self.status.setText(text)
        self.job.start(job)
        self.timer.start()
        self._enable()

    @Slot()
    def stop(self) -> None:
        self.job.request_stop()
        self.status.setText("Stopping after the α being scored…" if self._job_kind == "sweep" else
                            "An export cannot stop half-way (it appears complete or not at all); it will finish.")

    @Slot()
    def _drain(self) -> None:
        while self.job.events:
            msg = str(self.job.events.popleft())
            if self._job_kind == "sweep" and msg.startswith("α="):
                self._scored += 1
                self.status.setText(f"α {self._scored} / {self._n_alphas} scored · {msg}")
            else:
                self.status.setText(msg)

    @Slot(object, str)
    def _done(self, result, error: str) -> None:
        self.timer.stop()
        self._drain()
        kind, self._job_kind = self._job_kind, ""
        if error:
            self.status.setText(f"<span style='color:#d62728'>{error}</span>")
        elif kind == "sweep" and result:
            self.show_sweep(result)
            self._save_choice()
            n = len(result["points"])
            self.status.setText(f"{n} α scored{' (stopped early)' if n < self._n_alphas else ''}; recorded in "
                                f"{result.get('saved_to')}")
        elif kind == "export" and result:
            self._save_choice(exported_to=result["output"], exported_alpha=result["alpha"])
            self.status.setText(f"θ(α = {result['alpha']:g}) written to {result['output']} "
                                f"({result['tensors']} tensors); transformers loads it as is")
        self._enable()

    def _enable(self) -> None:
        busy = self.job.running
        self.sweep_button.setEnabled(bool(self.run_dir) and not busy)
        self.stop_button.setEnabled(busy)
        self.export_button.setEnabled(bool(self.points) and not busy)
        self.slider.setEnabled(bool(self.points) and not busy)

    def shutdown(self) -> None:
        self.timer.stop()
        self.job.shutdown()
