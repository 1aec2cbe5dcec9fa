"""Small widgets of the generated training form: spin and combo boxes that leave the mouse wheel to the form
unless they have focus, a collapsible group, and readable labels for field names.

A spin box under the pointer takes every wheel event by default, so scrolling a long form changed the values
it passed over (``seq_len`` 256 → 216 on the way down). These take keyboard/click focus only (StrongFocus) and,
until focused, hand the wheel to the scroll area around them (sent on explicitly: Qt propagates an ignored
wheel event only when it came from the window system).
"""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (QAbstractScrollArea, QApplication, QComboBox, QFormLayout, QSizePolicy, QSpinBox,
                               QToolButton, QVBoxLayout, QWidget)

# Words for the fields a user meets first; any other field reads as its name in words ("grad_accum" →
# "Grad accum"). The field name itself stays in the tooltip.
LABELS = {
    "lr": "Learning rate", "epochs": "Epochs", "max_steps": "Max steps (None: by epochs)",
    "batch_size": "Batch size", "seq_len": "Sequence length", "precision": "Precision",
    "grad_accum": "Gradient accumulation", "source": "Model", "dataset": "Dataset", "val_fraction": "Validation share",
    "val_dataset": "Validation dataset", "max_rows": "Max rows", "warmup_ratio": "Warm-up share",
    "warmup_steps": "Warm-up steps", "min_lr_ratio": "Final LR share", "grad_clip": "Gradient clip",
    "layer_lr_decay": "Layer-wise LR decay ξ", "bf16_rounding": "bf16 rounding", "l2sp": "L2-SP λ",
    "l2sp_anchor": "L2-SP anchor (θ0) on", "ewc": "EWC λ", "ewc_batches": "EWC Fisher batches",
    "mix_fraction": "General-text mix share", "retention_data": "General-text file",
    "retention_eval": "Measure forgetting", "drift_every": "Drift every N steps", "eval_every": "Evaluate every N steps",
    "eval_batches": "Evaluation batches", "checkpoint_every": "Checkpoint every N steps",
    "keep_last": "Keep last K checkpoints", "gpus": "GPUs (FSDP2)", "memory_snapshot_every": "Memory snapshot every",
    "trust_remote_code": "Trust remote code", "activation_checkpointing": "Activation checkpointing",
    "offload_activations": "Offload activations",
    "checkpoint_blocks": "Checkpointed blocks (0: all)", "optimizer_in_backward": "Optimizer step in backward",
    "log_every": "Log every N steps", "nonfinite": "On NaN/inf loss", "max_skips": "Max skipped steps",
    "beta1": "Adam β1", "beta2": "Adam β2", "eps": "Adam ε", "run_name": "Run name", "output": "Output folder",
}
ESSENTIALS = ("lr", "epochs", "max_steps", "batch_size", "seq_len", "precision")
SECTION_TITLES = {
    "model": "Model", "data": "Data", "train": "Run length and output", "optim": "Optimizer",
    "schedule": "Learning-rate schedule", "memory": "Memory savers", "regularize": "Forgetting remedies",
    "eval": "Evaluation", "checkpoint": "Checkpoints and export", "hardware": "Hardware",
}


def readable(name: str) -> str:
    """A field's label: the words above, or its name with spaces."""
    if name in LABELS:
        return LABELS[name]
    words = name.replace("_", " ")
    return words[:1].upper() + words[1:]


def pass_wheel_to_scroll_area(widget: QWidget, event) -> None:
    """Scroll the nearest scroll area around ``widget`` with this wheel event (or let it propagate)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QAbstractScrollArea):
        parent = parent.parentWidget()
    if parent is None:
        event.ignore()
        return
    QApplication.sendEvent(parent.viewport(), event)
    event.accept()


class WheelSafeSpinBox(QSpinBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def wheelEvent(self, event) -> None:  # noqa: N802 (Qt name)
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            pass_wheel_to_scroll_area(self, event)


class WheelSafeComboBox(QComboBox):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def wheelEvent(self, event) -> None:  # noqa: N802 (Qt name)
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            pass_wheel_to_scroll_area(self, event)


class Collapsible(QWidget):
    """A header button (▸ title / ▾ title) over a form that shows only when expanded."""

    toggled = Signal(bool)

    def __init__(self, title: str, expanded: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.button = QToolButton()
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.setStyleSheet("QToolButton { border: none; font-weight: bold; text-align: left; }")
        self.button.toggled.connect(self.set_expanded)
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setContentsMargins(14, 0, 0, 6)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.button)
        lay.addWidget(self.body)
        self.button.setChecked(expanded)
        self.set_expanded(expanded)

    @Slot(bool)
    def set_expanded(self, on: bool) -> None:
        if self.button.isChecked() != on:
            self.button.setChecked(on)  # → toggled → here again, with the button in step
            return
        self.button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.button.setText(self.title)
        self.body.setVisible(on)
        self.toggled.emit(on)

    @property
    def expanded(self) -> bool:
        return self.button.isChecked()
