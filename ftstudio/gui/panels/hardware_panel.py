"""HardwarePanel: every NVIDIA GPU from NVML (memory, utilisation, temperature, power) refreshed about once a
second, the CPU when there is none; which GPUs to train on; and which card the memory plan is drawn against.

The ticks are the view of ``hardware.device`` / ``hardware.gpus`` (see :func:`hardware_fields` and
:func:`ticked_for`): none ticked trains on the CPU, one on that card, several as one FSDP2 run (torchrun,
sharded weights, gradients and optimizer state). Only a user's click writes the config; ticks set from a
loaded config do not echo back.

NVML is polled on a pool thread (a driver call can stall for tens of ms); a poll still in flight skips a tick.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (QComboBox, QGroupBox, QHBoxLayout, QLabel, QTreeWidget, QTreeWidgetItem, QVBoxLayout,
                               QWidget)

from ..engine_access import engine, fmt_bytes
from ..worker import JobRunner

POLL_MS = 1000
CARDS_GB = (8, 12, 16, 24, 40, 48, 80, 94, 141, 192)  # the common cards' memory, in GB (1e9 bytes)
THIS_MACHINE = "ram"  # the target item "this machine's RAM" (a CPU-only machine, or a CPU run)
CUSTOM = "custom"  # the target item that asks for a size


def card_label(gb: float, custom: bool = False) -> str:
    """"24 GB card" (the --target-card label), "Custom: 33.5 GB card"."""
    return ("Custom: " if custom else "") + f"{gb:g} GB card"


def hardware_fields(selected: list[int]) -> dict:
    """The config leaves the ticked GPUs stand for."""
    if not selected:
        return {"device": "cpu", "gpus": []}
    if len(selected) == 1:
        return {"device": f"cuda:{selected[0]}", "gpus": []}
    return {"device": "cuda", "gpus": sorted(selected)}


def ticked_for(device: str, gpus: list[int], available: list[int]) -> list[int]:
    """The ticks that show a config's device/gpus on the GPUs present ("auto"/"cuda": the first one)."""
    if gpus:
        return [g for g in gpus if g in available]
    if device.startswith("cuda:"):
        n = int(device[5:])
        return [n] if n in available else []
    if device == "cpu" or not available:
        return []
    return available[:1]


def poll_hardware() -> dict:
    hw = engine("hardware", "list_gpus", "cpu_info")
    gpus = hw.list_gpus()
    return {"gpus": gpus, "cpu": hw.cpu_info(),  # the host's RAM plans a CPU run even beside GPUs
            "message": hw.gpu_status_message() if not gpus and hasattr(hw, "gpu_status_message") else ""}


class HardwarePanel(QGroupBox):
    selectionChanged = Signal(list)  # ticked GPU indices, after a user's click only
    targetChanged = Signal(object, str)  # capacity in bytes (or None), label

    def __init__(self, jobs_pool=None, parent: QWidget | None = None):
        super().__init__("Hardware", parent)
        self.setObjectName("hardwarePanel")
        self.gpus: list = []
        self.cpu = None
        self.wanted: tuple[str, list[int]] = ("auto", [])  # the config's device/gpus, ticked when GPUs appear
        self.polls = 0
        self._in_flight = False
        self.jobs = JobRunner(jobs_pool, self)
        self.jobs.done.connect(self._polled)
        self.jobs.failed.connect(self._poll_failed)
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)

    def _build(self) -> None:
        lay = QVBoxLayout(self)
        self.table = QTreeWidget()
        self.table.setObjectName("gpuTable")
        self.table.setHeaderLabels(["use", "device", "memory", "util", "temp", "power"])
        self.table.setRootIsDecorated(False)
        self.table.setMinimumHeight(70)
        self.table.itemChanged.connect(self._item_changed)
        lay.addWidget(self.table)
        self.note = QLabel("Looking for GPUs…")
        self.note.setWordWrap(True)
        lay.addWidget(self.note)
        row = QHBoxLayout()
        row.addWidget(QLabel("Plan memory for:"))
        self.target = QComboBox()
        self.target.setObjectName("targetCard")
        self.target.setToolTip("The card the memory bar compares the plan with: a GPU of this machine, this "
                                "machine's RAM, or any card size (also from a machine without a GPU, to plan a run "
                                "for another one).")
        self.custom_gb: float | None = None
        self.target.currentIndexChanged.connect(self._target_changed)
        row.addWidget(self.target, 1)
        lay.addLayout(row)
        lay.addStretch(1)  # the room below the card choice stays empty, not the table
        self._fill_targets()

    def start(self) -> None:
        self.poll()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    @Slot()
    def poll(self) -> None:
        if self._in_flight:
            return
        self._in_flight = True
        self.jobs.submit("poll", poll_hardware)

    # -- results -------------------------------------------------------------------------------
    @Slot(object, object)
    def _polled(self, _tag, result) -> None:
        self._in_flight = False
        self.polls += 1
        first = self.polls == 1
        known = [g.index for g in self.gpus]
        self.gpus, self.cpu = result["gpus"], result["cpu"]
        now = [g.index for g in self.gpus]
        if first or known != now:
            self._rebuild_rows(result.get("message", ""))
            self._fill_targets()
        else:
            self._update_rows()

    @Slot(object, object)
    def _poll_failed(self, _tag, exc) -> None:
        self._in_flight = False
        self.polls += 1
        self.note.setText(f"Hardware not readable: {exc}")

    def _rebuild_rows(self, message: str) -> None:
        self.table.blockSignals(True)
        self.table.clear()
        if self.gpus:
            for _g in self.gpus:
                item = QTreeWidgetItem()
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(0, Qt.CheckState.Unchecked)
                self.table.addTopLevelItem(item)
            self._tick(ticked_for(*self.wanted, [int(g.index) for g in self.gpus]))
        else:
            item = QTreeWidgetItem()
            self.table.addTopLevelItem(item)
            said = (message or "No NVIDIA GPU found").strip().rstrip(".")
            self.note.setText(said[:1].upper() + said[1:] + ". Training runs on the CPU (slow, but every feature "
                              "works); the plan can still be drawn for any card below.")
        self.table.blockSignals(False)
        self._update_rows()
        for c in range(6):
            self.table.resizeColumnToContents(c)
        # as tall as its rows (one for a CPU-only machine, eight for an 8-GPU node), not an empty white box
        rows = max(1, self.table.topLevelItemCount())
        row_h = max(self.table.sizeHintForRow(0), self.table.fontMetrics().height() + 4)
        self.table.setMaximumHeight(self.table.header().sizeHint().height() + rows * row_h
                                    + 2 * self.table.frameWidth() + 4)

    def _update_rows(self) -> None:
        self.table.blockSignals(True)
        for i, g in enumerate(self.gpus):
            item = self.table.topLevelItem(i)
            if item is None:
                continue
            item.setText(1, f"{g.index}: {g.name}")
            item.setText(2, f"{fmt_bytes(g.used_bytes)} / {fmt_bytes(g.total_bytes)}")
            item.setText(3, "–" if g.utilization is None else f"{g.utilization:.0f} %")
            item.setText(4, "–" if g.temperature is None else f"{g.temperature:.0f} °C")
            item.setText(5, "–" if g.power_watts is None else f"{g.power_watts:.0f} W")
        if not self.gpus and self.cpu is not None and self.table.topLevelItem(0) is not None:
            c, item = self.cpu, self.table.topLevelItem(0)
            item.setText(1, f"CPU: {c.name} ({c.logical_cores or '?'} threads)")
            item.setText(2, f"{fmt_bytes(c.ram_total_bytes - c.ram_available_bytes)} / {fmt_bytes(c.ram_total_bytes)}")
            item.setText(3, f"{c.utilization:.0f} %")
        self.table.blockSignals(False)

    def set_config(self, device: str, gpus: list[int]) -> None:
        """Show a config's choice as ticks (no selectionChanged: the config already says so)."""
        self.wanted = (device, list(gpus))
        if self.gpus:
            self._tick(ticked_for(device, list(gpus), [int(g.index) for g in self.gpus]))

    def _tick(self, indices: list[int]) -> None:
        self.table.blockSignals(True)
        for i, g in enumerate(self.gpus):
            item = self.table.topLevelItem(i)
            if item is not None:
                item.setCheckState(0, Qt.CheckState.Checked if int(g.index) in indices else Qt.CheckState.Unchecked)
        self.table.blockSignals(False)
        self._show_choice()

    def _show_choice(self) -> None:
        if not self.gpus:
            return
        chosen = self.selected()
        if not chosen:
            text = "No GPU ticked: training runs on the CPU (slow). Tick one GPU, or several for one run."
        elif len(chosen) == 1:
            text = (f"Training on GPU {chosen[0]}. Tick more GPUs to shard the run over them (FSDP2: weights, "
                    "gradients and optimizer state split across the cards; the memory bar plans per GPU).")
        else:
            text = (f"One FSDP2 run over GPUs {', '.join(map(str, chosen))} (torchrun, {len(chosen)} processes): "
                    f"weights, gradients and optimizer state are sharded, so each card holds about 1/{len(chosen)} "
                    "of them; the memory bar plans per GPU and shows each card during the run.")
        self.note.setText(text)

    @Slot(QTreeWidgetItem, int)
    def _item_changed(self, _item, column: int) -> None:
        if column == 0:
            chosen = self.selected()
            self.wanted = (hardware_fields(chosen)["device"], hardware_fields(chosen)["gpus"])
            self._show_choice()
            self._fill_targets()
            if chosen:  # plan against the first ticked card (all ticked cards of one run are usually alike)
                idx = self.target.findData(next(g.total_bytes for g in self.gpus if int(g.index) == chosen[0]))
                if idx >= 0:
                    self.target.setCurrentIndex(idx)
            self.selectionChanged.emit(chosen)

    def selected(self) -> list[int]:
        out = []
        for i, g in enumerate(self.gpus):
            item = self.table.topLevelItem(i)
            if item is not None and item.checkState(0) == Qt.CheckState.Checked:
                out.append(int(g.index))
        return out

    # -- target card ---------------------------------------------------------------------------
    def _list_targets(self) -> None:
        """This machine's GPUs (or its RAM), every common card size, the custom size, "Custom size…"; the
        current choice kept by its label (no signal)."""
        current = self.target.currentText()
        self.target.blockSignals(True)
        self.target.clear()
        for g in self.gpus:
            self.target.addItem(f"GPU {g.index}: {g.name} ({fmt_bytes(g.total_bytes)})", g.total_bytes)
        if not self.gpus:
            self.target.addItem(self.ram()[1].replace("CPU RAM", "This machine: CPU RAM"), THIS_MACHINE)
        for gb in CARDS_GB:
            self.target.addItem(card_label(gb), gb * 1e9)
        if self.custom_gb:
            self.target.addItem(card_label(self.custom_gb, custom=True), self.custom_gb * 1e9)
        self.target.addItem("Custom size…", CUSTOM)
        idx = self.target.findText(current)
        if idx < 0 and current.startswith("This machine"):
            idx = self.target.findData(THIS_MACHINE)  # the RAM's label changes with its first reading
        self.target.setCurrentIndex(max(0, idx))
        self.target.blockSignals(False)

    def _fill_targets(self) -> None:
        self._list_targets()
        self._target_changed(self.target.currentIndex())

    @Slot(int)
    def _target_changed(self, index: int) -> None:
        if index < 0:
            return
        if self.target.itemData(index) == CUSTOM:
            from PySide6.QtWidgets import QInputDialog
            gb, ok = QInputDialog.getDouble(self, "Plan memory for a card", "Memory of the card (GB):",
                                            self.custom_gb or 32.0, 1.0, 4096.0, 1)
            self.set_custom(gb if ok else None)
            return
        self.targetChanged.emit(*self.capacity())

    def set_custom(self, gb: float | None) -> None:
        """Plan for a card of ``gb`` GB (listed as "Custom: … GB card"); None goes back to the first item."""
        if gb:
            self.custom_gb = float(gb)
        self._list_targets()
        idx = self.target.findText(card_label(self.custom_gb, custom=True)) if gb else 0
        self.target.blockSignals(True)
        self.target.setCurrentIndex(max(0, idx))
        self.target.blockSignals(False)
        self.targetChanged.emit(*self.capacity())

    def capacity(self) -> tuple[float | None, str]:
        """(bytes, label) of the chosen target; this machine's RAM when that is the choice."""
        data = self.target.currentData()
        if data == THIS_MACHINE or data == CUSTOM or data is None:
            return self.ram()
        return float(data), self.target.currentText()

    def card_is_local(self) -> bool:
        """True when the chosen target is one of this machine's GPUs (listed first)."""
        return 0 <= self.target.currentIndex() < len(self.gpus)

    def card_chosen(self) -> bool:
        """True when the plan is for a card size the user picked (a GPU of this machine or any listed size),
        not for this machine's RAM: a CPU-only machine then plans a GPU run for that card."""
        return self.target.currentData() not in (THIS_MACHINE, CUSTOM, None)

    @property
    def polled(self) -> bool:
        return self.polls > 0

    def ram(self) -> tuple[float | None, str]:
        """The machine's RAM, what a CPU run is planned against (None before the first poll)."""
        if self.cpu is None:
            return None, "CPU RAM"
        return float(self.cpu.ram_total_bytes), f"CPU RAM ({fmt_bytes(self.cpu.ram_total_bytes)})"
