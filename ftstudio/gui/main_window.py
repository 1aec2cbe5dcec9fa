"""MainWindow: configuration panels on the left (model, data, hardware, training), the monitor in the middle,
runs and compare as tabs, the memory bar and the run controls along the bottom.

The window owns one RunController (the training QThread) and one QThreadPool for short jobs; closing the
window asks, stops the run through Control (saving a checkpoint), and waits for every thread.
"""
from __future__ import annotations

import gc
import time

from PySide6.QtCore import QSettings, Qt, QThreadPool, QTimer, Signal, Slot
from PySide6.QtWidgets import (QApplication, QHBoxLayout, QMainWindow, QPushButton, QSplitter, QVBoxLayout,
                               QWidget)

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import RunFinished

from .compare_tab import CompareTab
from .fit import ElidedLabel, ScrollTabs, WheelGuard, plots_take_no_focus, scrolled
from .run_text import advice_actions, result_line
from .engine_access import EngineMissing, engine
from .heartbeat import Heartbeat
from .memory_bar import MemoryBar
from .traced_plan import attach as attach_traced_plans
from .monitor import Monitor
from .panels.data_panel import DatasetPanel
from .panels.hardware_panel import HardwarePanel
from .panels.model_panel import ModelPanel
from .panels.training_panel import TrainingPanel
from .runs_tab import RunsTab
from .status_line import StatusLineMixin
from .window_life import WindowLifecycleMixin
from .window_menus import WindowMenusMixin


def freeze_setup_objects() -> None:
    """Move every object alive when training steps begin (imported torch/transformers, the loaded model) out
    of the cyclic collector's reach until the run ends. A full collection over them holds the GIL for
    200–300 ms on this machine: the trainer's own ``gc.collect()`` at the end of a run, or one the
    interpreter triggers mid-run, froze the event loop that long. The window unfreezes them when the run
    ends; a later full collection (at the next Start) frees any cycles among them."""
    gc.freeze()


def _warm_imports() -> None:
    import torch  # noqa: F401

    engine("hf_imports").ready()     # transformers' classes, loaded under the lock the engine's threads share


class MainWindow(WindowLifecycleMixin, StatusLineMixin, WindowMenusMixin, QMainWindow):
    runFinished = Signal(object)  # RunFinished | RunFailed, after the thread ended
    planUpdated = Signal(object)  # MemoryBreakdown

    def __init__(self, config: RunConfig | None = None, settings: QSettings | None = None,
                 restore_last: bool = False):
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("FT Studio — full fine-tuning")
        self.settings = settings or QSettings()
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(3)
        self.ask_on_close = True
        self.plan = None
        self.model_info = None
        self.last_result = None
        self._requested_source: str | None = None  # the model source last sent to the model panel
        self._start_when_checked = False  # Start pressed while the data was being checked
        from .worker import RunController
        self.runs = RunController(self)
        self.runs.done.connect(self._run_done)
        self.heartbeat = Heartbeat(parent=self)
        self.heartbeat.training_ids = self.runs.training_thread_ids
        self._build()
        self._build_menus()
        self.wheel_guard = WheelGuard(self)  # the wheel over an unfocused value control scrolls, never edits
        QApplication.instance().installEventFilter(self.wheel_guard)
        self._fitted = False
        self.finishing = False  # closed mid-run: the step finishes and the checkpoint is written, then it closes
        cfg = config or (self._last_config() if restore_last else None) or RunConfig()
        self._restore_settings()
        self.model_panel.set_trust(cfg.model.trust_remote_code)
        self.training_panel.set_config(cfg)  # → _config_changed: describes the model, checks the data
        self.hardware_panel.start()
        self.model_panel.refresh_cache()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_panel = ModelPanel(self.pool)
        self.data_panel = DatasetPanel(self.pool)
        self.hardware_panel = HardwarePanel(self.pool)
        self.training_panel = TrainingPanel()
        self.monitor = Monitor()
        self.memory_bar = MemoryBar()
        self.traced_plans = attach_traced_plans(self)   # the traced plan, off the GUI thread
        self.runs_tab = RunsTab(self.pool)
        self.compare_tab = CompareTab(self.pool)

        # Every panel scrolls rather than push the window's minimum size past a small screen (1280×720 at
        # 100 %, 1920×1080 at 150 %) or crush its rows; splitters let the user give room where it is wanted.
        setup = QSplitter(Qt.Orientation.Vertical)
        setup.setObjectName("setupSplitter")
        setup.addWidget(scrolled(self.model_panel))
        setup.addWidget(scrolled(self.data_panel))
        setup.setStretchFactor(0, 0)  # the model's facts keep their height; the data panel takes the rest
        setup.setStretchFactor(1, 1)
        setup.setChildrenCollapsible(False)
        self.setup_splitter = setup
        self.setup_user_sized = False  # once the user drags it, the window stops sizing the model's pane
        setup.splitterMoved.connect(self._setup_dragged)
        self.left = ScrollTabs()
        self.left.setObjectName("setupTabs")
        self.left.addTab(setup, "Model && data")
        self.left.addTab(self.training_panel, "Training")  # its form scrolls on its own
        self.left.add_scrolled(self.hardware_panel, "Hardware")
        self.center = ScrollTabs()
        self.center.setObjectName("mainTabs")
        self.center.addTab(self.monitor, "Monitor")  # its plots reflow and scroll on their own
        self.center.add_scrolled(self.runs_tab, "Runs", horizontal=True)
        self.center.add_scrolled(self.compare_tab, "Compare", horizontal=True)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setObjectName("mainSplitter")
        split.addWidget(self.left)
        split.addWidget(self.center)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([480, 800])
        split.setChildrenCollapsible(False)
        self.splitter = split

        controls = QHBoxLayout()
        self.start_button = self._button("Start", "startButton", self.start_clicked, "Start training (Ctrl+R)")
        self.pause_button = self._button("Pause", "pauseButton", self.toggle_pause, "Pause between steps / resume")
        self.stop_button = self._button("Stop", "stopButton", self.stop_run, "Stop after the current step")
        self.save_button = self._button("Save checkpoint", "saveButton", self.save_now,
                                        "Write a resumable checkpoint after the current step")
        for b in (self.start_button, self.pause_button, self.stop_button, self.save_button):
            controls.addWidget(b)
        self.status_label = ElidedLabel("")
        self.status_label.setObjectName("statusLabel")
        self.status_text = ""
        controls.addWidget(self.status_label, 1)
        self.undo_button = self._button("Undo", "undoButton", self.undo_window_change,
                                        "Put back the values the window changed")
        self.undo_button.setVisible(False)
        controls.addWidget(self.undo_button)

        body = QSplitter(Qt.Orientation.Vertical)  # the memory bar gives room to the panels when asked
        body.setObjectName("bodySplitter")
        body.addWidget(split)
        self.memory_scroll = scrolled(self.memory_bar)
        body.addWidget(self.memory_scroll)
        body.setStretchFactor(0, 1)
        body.setStretchFactor(1, 0)
        body.setChildrenCollapsible(False)
        self.body_splitter = body
        self.memory_user_sized = False  # once the user drags it, the window stops sizing the memory pane
        body.splitterMoved.connect(self._memory_dragged)

        host = QWidget()
        lay = QVBoxLayout(host)
        lay.setContentsMargins(6, 6, 6, 4)
        lay.addLayout(controls)
        lay.addWidget(body, 1)
        self.setCentralWidget(host)
        plots_take_no_focus(host)
        self._set_running(False)

        self.model_panel.modelChanged.connect(self._model_changed)
        self.model_panel.modelFailed.connect(self._model_failed)
        self.model_panel.trustChanged.connect(self._trust_changed)
        self.data_panel.reportReady.connect(self._data_checked)
        self.data_panel.dataFailed.connect(self._data_failed)
        self.data_panel.datasetRequested.connect(self._dataset_requested)
        self.training_panel.configChanged.connect(self._config_changed)
        self.training_panel.bulkChanged.connect(self._bulk_changed)
        self.hardware_panel.targetChanged.connect(self._target_changed)
        self.hardware_panel.selectionChanged.connect(self._gpus_changed)
        self.monitor.memoryMeasured.connect(self.memory_bar.set_measured)
        self.memory_bar.applyRequested.connect(self._apply_advice)
        self.memory_bar.contentChanged.connect(self._memory_content_changed)
        self.monitor.eventsProcessed.connect(self._events_processed)
        self.monitor.runStarted.connect(self._run_started)
        self.runs_tab.openRun.connect(self._open_run)
        self.runs_tab.resumeRun.connect(self._resume_run)

    def _button(self, text: str, name: str, slot, tip: str) -> QPushButton:
        b = QPushButton(text)
        b.setObjectName(name)
        b.setToolTip(tip)
        b.clicked.connect(slot)
        return b

    # -- config and plan -----------------------------------------------------------------------
    def config(self) -> RunConfig:
        return self.training_panel.config()

    @Slot(object)
    def _config_changed(self, cfg: RunConfig) -> None:
        if cfg.model.source != self._requested_source:
            self._requested_source = cfg.model.source
            self.model_panel.choose(cfg.model.source)
        self.data_panel.set_data_config(cfg.data)
        self.data_panel.set_task(None if cfg.model.task == "auto" else cfg.model.task)
        self.hardware_panel.set_config(cfg.hardware.device, cfg.hardware.gpus)
        self.runs_tab.set_root(cfg.train.output)
        self.clear_stale_error("config")
        self._update_plan()

    @Slot(str, object)
    def _bulk_changed(self, what: str, before) -> None:
        self.say_change(what, before)

    @Slot(object)
    def _model_changed(self, info) -> None:
        self.model_info = info
        self.training_panel.set_model_layers(info.num_layers)
        self.training_panel.set_context_length(getattr(info, "context_length", None))
        self._requested_source = info.source
        if self.config().model.source != info.source:
            self.training_panel.set_value("source", info.source)
        cfg = self.config()
        self.data_panel.set_model(info, None if cfg.model.task == "auto" else cfg.model.task,
                                  cfg.model.trust_remote_code)
        self._resolve_task()
        self._update_plan()
        self._remember("recentModels", info.source)
        self.clear_stale_error("model")
        if not self.setup_user_sized:
            QTimer.singleShot(0, self._fit_setup_panes)  # the new facts' height, once laid out
        self._set_running(self.runs.running)

    @Slot(str)
    def _model_failed(self, message: str) -> None:
        """The failed choice is not the model: no facts, no plan, and Start waits for a model that resolves
        (the form still names the last good source, which must not train behind the user's back)."""
        self.model_info = None
        self.plan = None
        self.training_panel.set_model_layers(None)
        self.training_panel.set_context_length(None)
        self.memory_bar.set_unavailable(f"No memory plan: {message}")
        self._set_running(self.runs.running)
        if not self.runs.running:  # the line says what is true now: no model (an older data error is stale)
            self._status(f"No model loaded: {message.rstrip('.')}. Choose another in the Model & data tab.",
                         error=True, about="model")

    @Slot(bool)
    def _trust_changed(self, on: bool) -> None:
        self.training_panel.set_value("trust_remote_code", on)

    @Slot(str)
    def _dataset_requested(self, path: str) -> None:
        if path:
            self.training_panel.set_value("dataset", path)
            self._remember("recentDatasets", path)

    @Slot(object)
    def _data_checked(self, report) -> None:
        self.training_panel.set_train_rows(report.train_rows or None)
        if not self.data_panel.error:
            self.clear_stale_error("data")
        self._resolve_task()
        self._start_if_waiting()

    @Slot(str)
    def _data_failed(self, _message: str) -> None:
        self._start_if_waiting()

    def _start_if_waiting(self) -> None:
        if self._start_when_checked and not self.checks_pending():
            self._start_when_checked = False
            self.start_run()  # checks the fresh report: a dataset with errors does not start

    @Slot(object, str)
    def _target_changed(self, _capacity, _label) -> None:
        self._update_plan()

    @Slot(list)
    def _gpus_changed(self, gpus: list) -> None:
        """A tick in the hardware panel: none = CPU, one = that card, several = one FSDP2 run over them."""
        from .panels.hardware_panel import hardware_fields
        self.training_panel.set_values(**hardware_fields(gpus))  # → _config_changed → _update_plan

    def _resolve_task(self) -> None:
        if self.model_info is None:
            return
        rep = self.data_panel.report
        try:
            task = engine("models", "resolve_task").resolve_task(self.config().model.task, self.model_info,
                                                                  rep.format if rep else None)
            self.model_panel.show_task(task)
        except EngineMissing as e:
            self.model_panel.show_task(str(e), error=True)
        except Exception as e:  # ModelError: the model/data pair cannot train that task
            self.model_panel.show_task(str(e), error=True)

    def plan_device(self, cfg: RunConfig) -> str | None:
        """"cpu" when the run will train on the CPU (chosen, or "auto" on a machine without a GPU)."""
        device = cfg.hardware.device
        if device == "cpu" or (device == "auto" and self.hardware_panel.polled and not self.hardware_panel.gpus):
            return "cpu"
        return None

    def _update_plan(self) -> None:
        cfg = self.config()
        device = self.plan_device(cfg)
        if self.hardware_panel.card_chosen():  # a card picked in the list: plan a GPU run for it, from any machine
            device = None
            capacity, label = self.hardware_panel.capacity()
        else:
            capacity, label = self.hardware_panel.ram()
        self.memory_bar.capacity, self.memory_bar.capacity_label = capacity, label
        if self.model_info is None or not self.model_info.config:
            return
        gpus = max(1, len(cfg.hardware.gpus))  # the plan is per GPU: FSDP2 shards over the ticked cards
        t0 = time.perf_counter()
        try:
            mem = engine("memory", "estimate", "solve")
            plan = mem.estimate(self.model_info.config, cfg, gpus, device=device)
            advice = mem.solve(self.model_info.config, cfg, int(capacity), gpus, device=device) if capacity else None
            actions = advice_actions(mem, self.model_info.config, cfg, gpus, device, plan, advice)
        except EngineMissing as e:
            self.memory_bar.set_unavailable(f"Memory plan not available yet: {e}")
            return
        except Exception as e:  # an architecture the estimator does not know: say so, keep the app usable
            self.memory_bar.set_unavailable(f"No memory plan for this model: {type(e).__name__}: {e}")
            return
        self.plan_ms = (time.perf_counter() - t0) * 1000
        self.plan = plan
        hw = self.hardware_panel
        self.memory_bar.set_plan(plan, advice, actions, on_cpu=device == "cpu",
                                 other_machine=hw.card_chosen() and not hw.card_is_local(),
                                 how="closed form; tracing the model's own step…")
        self.planUpdated.emit(plan)
        self.traced_plans.request(self.model_info.config, cfg, gpus, device)

    @Slot(dict)
    def _apply_advice(self, leaves: dict) -> None:
        if not leaves or self.runs.running:
            return
        before = self.config()
        self.training_panel.set_values(**leaves)  # → _config_changed → a new plan
        for leaf in leaves:
            self.training_panel.reveal(leaf)
        self.say_change("Applied the memory advice", before)

    # -- run control ---------------------------------------------------------------------------
    @Slot()
    def start_clicked(self) -> None:
        """Start button and Run → Start: clicked(bool)/triggered(bool) must not reach ``resume_from``."""
        self.start_run()

    def start_run(self, resume_from: str | None = None) -> bool:
        if not isinstance(resume_from, str) or not resume_from:
            resume_from = None
        if self.runs.running:
            return False
        if self.training_panel.error:
            self._status(f"Fix the training form first: {self.training_panel.error}", error=True, about="config")
            return False
        if self.model_info is None:
            why = self.model_panel.error or "the model is still being read"
            self._status(f"Choose a model that loads first: {why}", error=True, about="model")
            return False
        if resume_from is None and self.checks_pending():
            self._start_when_checked = True
            self._status("Checking the data first; the run starts when the check passes.")
            return False
        if self.data_panel.error and resume_from is None:
            self._status(f"Fix the data first: {self.data_panel.error} (Model & data tab).", error=True, about="data")
            return False
        cfg = self.config()
        self.settings.setValue("lastConfig", cfg.to_yaml())
        from .compare_jobs import release_base
        release_base()  # the Compare tab's kept base model must not hold memory the run needs
        if gc.get_freeze_count() == 0 and self.last_result is not None:
            gc.collect()  # a previous run's cycles (its model, on a GPU) go before the next run loads its own
        self.memory_bar.clear_measured()
        self.monitor.attach(self.runs.events)
        self.runs.start(cfg, resume_from=resume_from)
        self.heartbeat.start()
        self.center.setCurrentWidget(self.monitor)
        self._set_running(True)
        self.runs_tab.set_running(resume_from)
        self._status("Running… (loading the model and data)")
        return True

    @Slot(object)
    def _run_started(self, e) -> None:
        self.runs_tab.set_running(e.run_dir)
        self.runs_tab.refresh()  # the new run is listed (as running) while it trains

    @Slot(int)
    def _events_processed(self, _n: int) -> None:
        if self.runs.running:
            self.runs_tab.set_live_steps(self.monitor.step, self.monitor.total_steps)
        if self.monitor.counts["step"] and self.heartbeat.mark_t is None:
            self.heartbeat.mark()
            freeze_setup_objects()
            self._status("Training. Pause holds between steps; Stop ends after the current step.")

    def checks_pending(self) -> bool:
        """True while the model is being described or the data checked (autostart waits for them)."""
        return self.model_panel.busy or self.data_panel.busy

    @Slot()
    def warm_up(self) -> None:
        """Import torch and transformers on a pool thread while the user looks around, so Start is quick."""
        self.pool.start(_warm_imports)

    @Slot()
    def toggle_pause(self) -> None:
        if not self.runs.running:
            return
        if self.runs.paused:
            self.runs.resume()
            self.pause_button.setText("Pause")
            self._status("Running.")
        else:
            self.runs.pause()
            self.pause_button.setText("Resume")
            self._status("Paused between steps; nothing is lost. Press Resume to continue.")

    @Slot()
    def stop_run(self) -> None:
        if self.runs.running:
            self.runs.request_stop()
            self._status("Stopping after the current step…")

    @Slot()
    def save_now(self) -> None:
        if self.runs.running:
            self.runs.request_save()
            self._status("A checkpoint will be written after the current step.")

    @Slot(object)
    def _run_done(self, result) -> None:
        gc.unfreeze()  # the run's objects are ordinary garbage again (collected by the next full collection)
        self.heartbeat.stop()
        self.monitor.detach()
        self.last_result = result
        self._set_running(False)
        from . import stall_probe
        if stall_probe.enabled():  # a diagnostic for developers, not a result
            self.monitor.append_log(self.heartbeat.summary())
        self._status(result_line(result), error=not isinstance(result, RunFinished))
        if isinstance(result, RunFinished):
            task = self.monitor.started.task if self.monitor.started else None
            self.compare_tab.set_run(result.output_dir, self.config(), result.final_model, task)
        self.runs_tab.set_running(None)
        self.runs_tab.refresh()
        self.runFinished.emit(result)
        if self.finishing:  # closed mid-run: the checkpoint is written, now the window goes
            self.finishing = False
            QTimer.singleShot(0, self.close)

    def _set_running(self, running: bool) -> None:
        """During a run the setup is read-only (the run holds its own copy of the config); Start needs a
        model that resolved."""
        self.start_button.setEnabled(not running and self.model_info is not None)
        self.start_button.setToolTip("Start training (Ctrl+R)" if self.model_info is not None or running
                                     else "Choose a model that loads first (Model & data tab).")
        for b in (self.pause_button, self.stop_button, self.save_button):
            b.setEnabled(running)
        self.pause_button.setText("Pause")
        for panel in (self.training_panel, self.model_panel, self.data_panel, self.hardware_panel.table):
            panel.setEnabled(not running)

    # -- runs tab ------------------------------------------------------------------------------
    @Slot(str, list)
    def _open_run(self, run_dir: str, events: list) -> None:
        try:
            cfg = RunConfig.load_run(f"{run_dir}/config.yaml")
            self.training_panel.set_config(cfg)
        except ConfigError as e:
            self._status(f"Cannot read the run's config: {e}", error=True)
        self.monitor.show_history(events)
        task = self.monitor.started.task if self.monitor.started else None
        self.compare_tab.set_run(run_dir, self.config(), f"{run_dir}/final", task)
        self.center.setCurrentWidget(self.monitor)

    @Slot(str)
    def _resume_run(self, run_dir: str) -> None:
        try:
            self.training_panel.set_config(RunConfig.load_run(f"{run_dir}/config.yaml"))
        except ConfigError as e:
            self._status(f"Cannot resume: {e}", error=True)
            return
        self.start_run(resume_from=run_dir)

