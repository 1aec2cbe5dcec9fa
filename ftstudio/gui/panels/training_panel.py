"""TrainingPanel, the view of RunConfig: one editor per dataclass field, generated from the sections in
core/config.py, with the field's docstring as its tooltip; the presets of core/presets.py (the combo shows the
one the config matches); the LR schedule drawn while editing; and, when layer_lr_decay ξ > 1, each layer
group's learning rate as bars.

Nothing here lists fields by hand, so a field added to RunConfig appears in the form by itself.
"""
from __future__ import annotations

import dataclasses
import math

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QDoubleValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
                               QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget)

from ftstudio.core import config as C
from ftstudio.core import presets as P
from ftstudio.core.errors import ConfigError
from ftstudio.engine.train.schedule import lr_curve

from ..forgetting_views import LayerRateBars
from ..theme import COLORS
from .form_widgets import (ESSENTIALS, SECTION_TITLES, Collapsible, WheelSafeComboBox, WheelSafeSpinBox,
                           readable)

# Choices come from config.py; a field named there gets a combo box.
CHOICES: dict[str, tuple[str, ...]] = C.FIELD_CHOICES
EDITABLE_CHOICES = {"device": ("auto", "cpu", "cuda", "cuda:0", "cuda:1"),
                    "report_to": ("none", "tensorboard", "wandb", "mlflow", "tensorboard,wandb,mlflow")}
NONE_INT = -1  # an optional int's spin box shows "None" at this value
NO_PRESET = "(no preset matches: choose one)"

def _kind(f: dataclasses.Field) -> tuple[str, bool]:
    """('int'|'float'|'bool'|'str'|'list', optional) from a field's (string) annotation."""
    t = str(f.type).replace(" ", "")
    optional = "None" in t
    base = t.replace("|None", "").replace("None|", "")
    if base.startswith("list"):
        base = "list"
    return base, optional


class FieldEditor:
    """Wraps one widget: get/set the python value, signal changes, show an error."""

    def __init__(self, section: str, f: dataclasses.Field, default, on_change):
        self.section, self.name = section, f.name
        self.kind, self.optional = _kind(f)
        self.default = default
        self.widget = self._make(on_change)
        self.widget.setObjectName(f"field_{f.name}")
        doc = C.field_docs(C.SECTIONS[section]).get(f.name, "")
        self.tooltip = f"<b>{section}.{f.name}</b> (--{f.name.replace('_', '-')})<br>{doc}"
        self.widget.setToolTip(self.tooltip)
        self.set(default)

    def _make(self, on_change) -> QWidget:
        if self.kind == "bool":
            w = QCheckBox()
            w.toggled.connect(on_change)
        elif self.name in CHOICES:
            w = WheelSafeComboBox()
            w.addItems(list(CHOICES[self.name]))
            w.currentTextChanged.connect(on_change)
        elif self.name in EDITABLE_CHOICES:
            w = WheelSafeComboBox()
            w.setEditable(True)
            w.addItems(list(EDITABLE_CHOICES[self.name]))
            w.currentTextChanged.connect(on_change)
        elif self.kind == "int":
            w = WheelSafeSpinBox()
            w.setRange(NONE_INT if self.optional else 0, 2**31 - 1)
            if self.optional:
                w.setSpecialValueText("None")
            w.setAccelerated(True)
            w.valueChanged.connect(on_change)
        else:  # float, str, list: text, so 2e-5 and "0, 1" can be typed as such
            w = QLineEdit()
            if self.kind == "float":
                w.setValidator(QDoubleValidator())
            if self.optional:
                w.setPlaceholderText("None")
            w.textChanged.connect(on_change)
        return w

    def get(self):
        w = self.widget
        if self.kind == "bool":
            return w.isChecked()
        if isinstance(w, QComboBox):
            return w.currentText().strip()
        if isinstance(w, QSpinBox):
            v = w.value()
            return None if self.optional and v == NONE_INT else v
        text = w.text().strip()
        if self.optional and text == "":
            return None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                return text  # RunConfig's check names the field
        if self.kind == "list":
            try:
                return [int(x) for x in text.replace(",", " ").split()]
            except ValueError:
                return text
        return text

    def set(self, value) -> None:
        w = self.widget
        w.blockSignals(True)
        try:
            if self.kind == "bool":
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                if w.findText(str(value)) < 0:
                    w.addItem(str(value))
                w.setCurrentText(str(value))
            elif isinstance(w, QSpinBox):
                w.setValue(NONE_INT if value is None else int(value))
            elif self.kind == "list":
                w.setText(", ".join(str(v) for v in (value or [])))
            elif value is None:
                w.setText("")
            else:
                w.setText(f"{value:g}" if isinstance(value, float) else str(value))
        finally:
            w.blockSignals(False)

    def show_error(self, message: str | None) -> None:
        self.widget.setStyleSheet("background: #f8d0d0; color: #000;" if message else "")
        self.widget.setToolTip(self.tooltip + (f"<br><span style='color:#d62728'>{message}</span>" if message else ""))


class TrainingPanel(QWidget):
    """Every RunConfig field, presets, and the LR schedule preview."""

    configChanged = Signal(object)  # a valid RunConfig after any edit
    bulkChanged = Signal(str, object)  # what changed several fields at once (a preset, Defaults), the config before
    invalid = Signal(str)  # the ConfigError message when the form does not validate

    def __init__(self, config: C.RunConfig | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("trainingPanel")
        self.editors: dict[str, FieldEditor] = {}
        self.train_rows: int | None = None
        self.num_layers: int | None = None  # blocks of the chosen model (ModelInfo), for the per-layer LR bars
        self.context_length: int | None = None  # the chosen model's positions, for the seq_len warning
        self._config = config or C.RunConfig()
        self.error: str | None = None
        self._build()
        self.set_config(self._config)

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Preset:"))
        self.preset = WheelSafeComboBox()  # one wheel notch must not apply a preset
        self.preset.setObjectName("presetCombo")
        self.preset.addItem(NO_PRESET)
        for i, name in enumerate(P.preset_names(), start=1):
            self.preset.addItem(name)
            self.preset.setItemData(i, P.DESCRIPTIONS.get(name, ""), Qt.ItemDataRole.ToolTipRole)
        self.preset.setToolTip("Presets by intent (core/presets.py): each sets a few fields on top of the current "
                               "config and keeps the model, data and run length. Shown here when the config "
                               "matches one.")
        self.preset.activated.connect(self._apply_preset_index)
        top.addWidget(self.preset, 1)
        reset = QPushButton("Defaults")
        reset.setToolTip("Reset every field to RunConfig's defaults (model and dataset are kept).")
        reset.clicked.connect(self.reset_defaults)
        top.addWidget(reset)
        lay.addLayout(top)

        self.lr_plot = pg.PlotWidget(title="LR schedule")
        self.lr_plot.setObjectName("lrSchedulePlot")
        self.lr_plot.setMinimumHeight(130)
        self.lr_plot.setMaximumHeight(170)
        self.lr_plot.setLabel("bottom", "step")
        self.lr_plot.showGrid(x=True, y=True, alpha=0.2)
        self.lr_curve = self.lr_plot.plot([], [], pen=pg.mkPen(COLORS["lr"], width=2))
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #d62728;")
        self.error_label.setVisible(False)  # no blank line under the presets while the form is valid
        lay.addWidget(self.error_label)

        # By intent: the choices made every time first, then every other field in a collapsed group per
        # section (generated from the dataclasses, so a new field appears by itself).
        form_host = QWidget()
        form_lay = QVBoxLayout(form_host)
        form_lay.setContentsMargins(0, 0, 0, 0)
        defaults = C.RunConfig()
        essentials = QGroupBox("Essentials")
        essentials.setObjectName("essentialsBox")
        ess_form = QFormLayout(essentials)
        ess_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form_lay.addWidget(essentials)
        fields = {f.name: (section, f) for section, cls in C.SECTIONS.items() for f in dataclasses.fields(cls)}
        self.essential_rows: list[str] = []
        for leaf in ESSENTIALS:
            if leaf in fields:
                section, f = fields[leaf]
                self._add_field(ess_form, section, f, defaults)
                self.essential_rows.append(leaf)
                if leaf == "seq_len":  # warned right where it is set
                    self.seq_warning = QLabel("")
                    self.seq_warning.setObjectName("seqLenWarning")
                    self.seq_warning.setWordWrap(True)
                    self.seq_warning.setStyleSheet("color: #b8860b;")
                    self.seq_warning.setVisible(False)
                    ess_form.addRow(self.seq_warning)
        form_lay.addWidget(self.lr_plot)  # the schedule right under the choices that shape it
        self.groups: dict[str, Collapsible] = {}
        for section, cls in C.SECTIONS.items():
            group = Collapsible(SECTION_TITLES.get(section, readable(section)))
            group.setObjectName(f"group_{section}")
            group.button.setToolTip(f"<b>{section}</b>: " + C.field_docs(C.RunConfig).get(section, ""))
            for f in dataclasses.fields(cls):
                if f.name in ESSENTIALS:
                    continue
                self._add_field(group.form, section, f, defaults)
                if f.name == "layer_lr_decay":  # ULMFiT's rates drawn right under ξ
                    self.layer_bars = LayerRateBars()
                    self.layer_note = QLabel("")
                    self.layer_note.setWordWrap(True)
                    group.form.addRow(self.layer_bars)
                    group.form.addRow(self.layer_note)
                    self.layer_group = group
            if group.form.rowCount():
                self.groups[section] = group
                form_lay.addWidget(group)
        form_lay.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the form fits the width
        self.scroll.setWidget(form_host)
        lay.addWidget(self.scroll, 1)

    def _add_field(self, form: QFormLayout, section: str, f: dataclasses.Field, defaults: C.RunConfig) -> None:
        ed = FieldEditor(section, f, getattr(getattr(defaults, section), f.name), self._on_edit)
        self.editors[f.name] = ed
        label = QLabel(readable(f.name))
        label.setObjectName(f"label_{f.name}")
        label.setToolTip(ed.tooltip)
        form.addRow(label, ed.widget)

    def reveal(self, leaf: str) -> None:
        """Expand the group that holds ``leaf`` and scroll it into view (advice's Apply, errors)."""
        ed = self.editors.get(leaf)
        if ed is None:
            return
        for group in self.groups.values():
            if group.isAncestorOf(ed.widget):
                group.set_expanded(True)
        self.scroll.ensureWidgetVisible(ed.widget)

    # -- values --------------------------------------------------------------------------------
    def values(self) -> dict[str, dict]:
        d: dict[str, dict] = {s: {} for s in C.SECTIONS}
        for leaf, ed in self.editors.items():
            d[ed.section][leaf] = ed.get()
        return d

    def config(self) -> C.RunConfig:
        """The last valid config (the form may hold an invalid edit: see ``error``)."""
        return self._config

    def set_config(self, cfg: C.RunConfig) -> None:
        for leaf, ed in self.editors.items():
            ed.set(cfg.get(leaf))
        self._on_edit()

    def set_value(self, leaf: str, value) -> None:
        """Set one field from outside (model/data panels) without echoing it back as a user edit."""
        self.set_values(**{leaf: value})

    def set_values(self, **leaves) -> None:
        """Set several fields at once and validate once (hardware.device and .gpus change together)."""
        for leaf, value in leaves.items():
            self.editors[leaf].set(value)
        self._on_edit()

    def apply_preset(self, name: str) -> None:
        """The preset's leaves on top of the last valid config (core.presets.apply_preset)."""
        self.set_config(P.apply_preset(self._config, name))

    @Slot(int)
    def _apply_preset_index(self, index: int) -> None:
        if index > 0:
            before = self._config
            self.apply_preset(self.preset.itemText(index))
            self.bulkChanged.emit(f"Preset \u201c{self.preset.itemText(index)}\u201d", before)
        self._show_preset()

    def _show_preset(self) -> None:
        """Select the preset the config matches (or the placeholder): never applies anything itself."""
        name = P.matching_preset(self._config)
        idx = self.preset.findText(name) if name else 0
        self.preset.blockSignals(True)
        self.preset.setCurrentIndex(max(0, idx))
        self.preset.blockSignals(False)

    @Slot()
    def reset_defaults(self) -> None:
        keep = {"source": self.editors["source"].get(), "dataset": self.editors["dataset"].get()}
        before = self._config
        self.set_config(C.RunConfig().replace(**keep))
        self.bulkChanged.emit("Defaults", before)

    def set_model_layers(self, num_layers: int | None) -> None:
        """The chosen model's number of blocks (from its description; no weights are loaded)."""
        self.num_layers = num_layers
        self._draw_layer_rates()

    def _draw_layer_rates(self) -> None:
        xi, lr = self._config.optim.layer_lr_decay, self._config.optim.lr
        show = xi > 1.0 and bool(self.num_layers)
        if show and not self.layer_bars.isVisibleTo(self):
            self.layer_group.set_expanded(True)  # the bars are the point of setting ξ: show them
        self.layer_bars.setVisible(show)
        if show:
            self.layer_bars.show_rates(int(self.num_layers), xi, lr)
            self.layer_note.setText("")
        elif xi > 1.0:
            self.layer_note.setText("The per-layer rates appear once the model's layer count is known.")
        else:
            self.layer_note.setText("ξ = 1: every layer trains at lr. ξ > 1 (ULMFiT: 2.6) lowers the rate of each "
                                    "layer below the head by ×ξ, so general early layers move least.")
        self.layer_note.setVisible(bool(self.layer_note.text()))

    def set_context_length(self, positions: int | None) -> None:
        """The chosen model's context (ModelInfo.context_length): a longer seq_len is warned under the field."""
        self.context_length = positions
        self._warn_seq_len()

    def _warn_seq_len(self) -> None:
        ctx, seq = self.context_length, self._config.data.seq_len
        over = bool(ctx) and seq > ctx
        self.seq_warning.setText(f"⚠ Longer than the model's context ({ctx:,} positions): rows past it get "
                                 "positions the model never saw. Lower the sequence length." if over else "")
        self.seq_warning.setVisible(over)

    def set_train_rows(self, rows: int | None) -> None:
        """Rows of the training split (from the data check): sets the step count of the LR preview."""
        self.train_rows = rows
        self._draw_lr()

    # -- validation ----------------------------------------------------------------------------
    @Slot()
    def _on_edit(self, *_args) -> None:
        for ed in self.editors.values():
            ed.show_error(None)
        try:
            cfg = C.RunConfig.from_dict(self.values())
        except ConfigError as e:
            leaf = e.field.split(".")[-1]
            # the form's words: the field's label ("Learning rate"), not its path (optim.lr: in the tooltip)
            self.error = f"{readable(leaf)}: {e.message}" if leaf in self.editors else str(e)
            if leaf in self.editors:
                self.editors[leaf].show_error(e.message)
                for group in self.groups.values():  # a collapsed group must not hide the field at fault
                    if group.isAncestorOf(self.editors[leaf].widget):
                        group.set_expanded(True)
            self.error_label.setText(self.error)
            self.error_label.setVisible(True)
            self.invalid.emit(self.error)
            return
        self.error = None
        self.error_label.setText("")
        self.error_label.setVisible(False)
        self._config = cfg
        self._draw_lr()
        self._draw_layer_rates()
        self._warn_seq_len()
        self._show_preset()
        self.configChanged.emit(cfg)

    def total_steps(self) -> tuple[int, bool]:
        """(steps, exact): max_steps when set, else epochs × ceil(train rows / effective batch)."""
        cfg = self._config
        if cfg.train.max_steps:
            return cfg.train.max_steps, True
        rows = self.train_rows
        per_step = cfg.train.batch_size * cfg.train.grad_accum * max(1, len(cfg.hardware.gpus))
        if not rows:
            return max(1, math.ceil(cfg.train.epochs * math.ceil(1000 / per_step))), False
        return max(1, math.ceil(cfg.train.epochs * math.ceil(rows / per_step))), True

    def _draw_lr(self) -> None:
        cfg = self._config
        steps, exact = self.total_steps()
        xs, ys = lr_curve(steps, cfg.schedule, cfg.optim.lr)
        self.lr_curve.setData(xs, ys)
        note = "" if exact else " (assuming 1000 rows)"
        self.lr_plot.setTitle(f"LR schedule: {cfg.schedule.schedule}, peak {cfg.optim.lr:g}, {steps} steps{note}",
                              size="9pt")
