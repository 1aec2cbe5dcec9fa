"""ModelPanel: pick the pre-trained model (θ0) and see what it is before any weight is loaded.

Sources: the bundled demo, models in the Hugging Face cache, recent folders, a folder or .gguf file, a hub id.
Describing a model reads config.json / safetensors headers / GGUF metadata on a pool thread (a hub id may touch
the network), so the GUI thread never waits.
"""
from __future__ import annotations

import time

from PySide6.QtCore import QTimer, Signal, Slot
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QGroupBox, QHBoxLayout,
                               QLineEdit, QMessageBox, QPushButton, QVBoxLayout, QWidget)

from ..engine_access import EngineMissing, engine, fmt_count
from . import add_fact_rows, breakable
from ..worker import JobRunner

DEMO_LABEL = "Demo: all-MiniLM-L6-v2 (22M, bundled)"


def describe(source: str, trust_remote_code: bool = False):
    return engine("models", "describe_model").describe_model(source, trust_remote_code=trust_remote_code)


class ModelPanel(QGroupBox):
    modelChanged = Signal(object)  # ModelInfo
    modelFailed = Signal(str)
    trustChanged = Signal(bool)

    def __init__(self, jobs_pool=None, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.setObjectName("modelPanel")
        self.info = None
        self.error: str | None = None
        self.recent: list[str] = []
        self._generation = 0
        self.busy = False
        self.jobs = JobRunner(jobs_pool, self)
        self.jobs.done.connect(self._job_done)
        self.jobs.failed.connect(self._job_failed)
        self._reading: tuple[str, float] | None = None  # (source, start) while a description runs
        self.ticker = QTimer(self)  # the status counts the seconds of a long read (a GGUF file: a minute or more)
        self.ticker.setInterval(1000)
        self.ticker.timeout.connect(self._tick)
        self._build()

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        self.combo = QComboBox()
        self.combo.setObjectName("modelCombo")
        self.combo.setToolTip("The demo, models found in the Hugging Face cache, and recent folders.")
        self.combo.addItem(DEMO_LABEL, "demo")
        self.combo.setPlaceholderText("No model loaded: choose one")
        self.combo.activated.connect(self._combo_activated)
        lay.addWidget(self.combo)

        row = QHBoxLayout()
        self.hub_edit = QLineEdit()
        self.hub_edit.setPlaceholderText("hub id (org/name), folder or .gguf path")
        self.hub_edit.returnPressed.connect(self._use_typed)
        row.addWidget(self.hub_edit, 1)
        for text, slot, tip in (("Use", self._use_typed, "Describe the model typed on the left."),
                                ("Folder…", self.open_folder, "A folder saved with save_pretrained (config.json)."),
                                ("GGUF…", self.open_gguf, "A .gguf file; it is de-quantized for full fine-tuning.")):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(slot)
            row.addWidget(b)
        lay.addLayout(row)

        self.trust = QCheckBox("Trust remote code")
        self.trust.setToolTip("Run Python code shipped with a hub model. Off by default; you are asked first.")
        self.trust.toggled.connect(self._trust_toggled)
        lay.addWidget(self.trust)

        # five rows (the dtype beside the count, the context beside the shape): the facts fit a short screen
        facts = (("source", "Source"), ("architecture", "Architecture"), ("params", "Parameters"),
                 ("shape", "Shape"), ("task", "Task"))
        self.fields, self.status = add_fact_rows(lay, facts, "modelStatus", selectable=True)

    # -- choosing ------------------------------------------------------------------------------
    def choose(self, source: str) -> None:
        """Describe ``source`` on a pool thread; ``modelChanged`` or ``modelFailed`` follows."""
        source = str(source).strip()
        if not source:
            return
        self._generation += 1
        self.busy = True
        self._reading = (source, time.monotonic())
        self._tick()
        self.ticker.start()
        self.status.setStyleSheet("")
        trust = self.trust.isChecked()
        self.jobs.submit(("describe", self._generation, source), lambda: describe(source, trust))

    @Slot()
    def _tick(self) -> None:
        if self._reading is None:
            self.ticker.stop()
            return
        source, t0 = self._reading
        waited = int(time.monotonic() - t0)
        slow = (" A GGUF file is read and its tensors de-quantised: this can take a minute or more."
                if source.lower().endswith(".gguf") else "")
        self.status.setText(breakable(f"Reading {source}… {waited} s." + slow) if waited else
                            breakable(f"Reading {source}…" + slow))

    def stop_reading(self) -> None:
        self._reading = None
        self.ticker.stop()

    def refresh_cache(self) -> None:
        """List the models in the Hugging Face cache (scan on a pool thread)."""
        self.jobs.submit(("cache", 0, ""), lambda: engine("models", "list_cached_models").list_cached_models())

    def set_recent(self, recent: list[str]) -> None:
        self.recent = [r for r in recent if r and r != "demo"][:10]
        self._rebuild_combo(cached=None)

    def _rebuild_combo(self, cached) -> None:
        current = self.info.source if self.info else "demo"
        keep_cached = [(self.combo.itemText(i), self.combo.itemData(i)) for i in range(self.combo.count())
                       if str(self.combo.itemText(i)).startswith("Cache: ")]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(DEMO_LABEL, "demo")
        if cached is not None:
            keep_cached = [(f"Cache: {m.source} ({fmt_count(m.params)})", m.source) for m in cached]
        for text, data in keep_cached:
            self.combo.addItem(text, data)
        for r in self.recent:
            self.combo.addItem(f"Recent: {r}", r)
        idx = self.combo.findData(current)
        if idx < 0:
            self.combo.addItem(current, current)
            idx = self.combo.count() - 1
        # after a failed choice no model is loaded: the combo shows none (its placeholder), not the last one
        self.combo.setCurrentIndex(-1 if self.info is None and self.error else idx)
        self.combo.blockSignals(False)

    @Slot(int)
    def _combo_activated(self, index: int) -> None:
        self.choose(self.combo.itemData(index))

    @Slot()
    def _use_typed(self) -> None:
        self.choose(self.hub_edit.text())

    @Slot()
    def open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a model folder (with config.json)")
        if path:
            self.choose(path)

    @Slot()
    def open_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.choose(path)

    @Slot(bool)
    def _trust_toggled(self, on: bool) -> None:
        if on and not self.confirm_trust():
            self.trust.blockSignals(True)
            self.trust.setChecked(False)
            self.trust.blockSignals(False)
            return
        self.trustChanged.emit(on)

    def confirm_trust(self) -> bool:
        answer = QMessageBox.warning(
            self, "Run code shipped with the model?",
            "Trusting remote code runs Python files that come with the model, with your permissions, on this "
            "computer. Only do this for models whose authors you trust and whose code you have read.\n\n"
            "Turn on trust_remote_code?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def set_trust(self, on: bool) -> None:
        """Set from a loaded config (the user already chose it there): no question asked."""
        self.trust.blockSignals(True)
        self.trust.setChecked(bool(on))
        self.trust.blockSignals(False)

    # -- results -------------------------------------------------------------------------------
    @Slot(object, object)
    def _job_done(self, tag, result) -> None:
        kind, gen, source = tag
        if kind == "cache":
            self._rebuild_combo(cached=result)
            return
        if gen != self._generation:
            return  # the user chose another model meanwhile
        self.busy = False
        self.stop_reading()
        self.info, self.error = result, None
        self.status.setStyleSheet("")
        self._show(result)
        missing = engine("models", "missing_tokenizer").missing_tokenizer(result)   # training could not start
        self.status.setText(breakable(f"Cannot train {source} as it is: {missing}") if missing else "")
        self.status.setStyleSheet("color: #d62728;" if missing else "")
        if source != "demo" and source not in self.recent:
            self.recent.insert(0, source)
            self.recent = self.recent[:10]
        self._rebuild_combo(cached=None)
        self.modelChanged.emit(result)

    @Slot(object, object)
    def _job_failed(self, tag, exc) -> None:
        kind, gen, source = tag
        if kind == "cache":
            return  # no cache, or no huggingface_hub: the list just stays short
        if gen != self._generation:
            return
        self.busy = False
        self.stop_reading()
        self.info = None
        self.error = str(exc) if not isinstance(exc, EngineMissing) else f"Model inspection not available: {exc}"
        for key, w in self.fields.items():  # the error replaces the facts: nothing of the last model stays
            w.setText("–")
            w.setStyleSheet("")
        self.fields["source"].setText(breakable(source))
        self.status.setText(breakable(f"Cannot use {source}: {self.error}"))
        self.status.setStyleSheet("color: #d62728;")
        self.combo.setCurrentIndex(-1)  # shows "No model loaded": the previous model is not the one in use
        self.modelFailed.emit(self.error)

    def _show(self, info) -> None:
        f = self.fields
        f["source"].setText(f"{info.source} ({info.kind})" + (f"<br><small>{breakable(info.path)}</small>" if info.path else ""))
        f["architecture"].setText(f"{info.architecture} · {info.model_type}" + (" · encoder" if info.is_encoder else ""))
        exact = "" if getattr(info, "params_exact", True) else " (estimated)"
        f["params"].setText((f"{info.params:,}{exact}" if info.params else "unknown") + f" · stored as {info.dtype}")
        context = f" · context {info.context_length:,}" if info.context_length else ""
        vocab = f"{info.vocab_size:,}" if isinstance(info.vocab_size, int) else "?"
        f["shape"].setText(f"{info.num_layers or '?'} layers × {info.hidden_size or '?'} · vocab {vocab}{context}")

    def show_task(self, text: str, error: bool = False) -> None:
        self.fields["task"].setText(text)
        self.fields["task"].setStyleSheet("color: #d62728;" if error else "")
