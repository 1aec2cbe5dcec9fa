"""MemoryBar, the view of a MemoryBreakdown: the plan (before the run) and what was measured (during it)
as stacked bars against the chosen card, with markers where 24, 48, 80 and 141 GB cards end.

Before the run the row "plan" shows the calibrated estimate and the seed's textbook figure (16N + s·b·d·L·12)
is drawn as a tick beside it; during the run the row "measured" fills from MemorySnapshot events (a
multi-GPU run gets one row per card, "cuda:0", "cuda:1", …: the plan is per GPU), so plan and truth can be
compared at a glance. The bar turns red, with the solver's advice below it, when the plan does not fit.
The scale always spans at least 150 GB so every card marker is in view; a small model's bar is a sliver,
so its total is printed beside it.
"""
from __future__ import annotations

import html

from PySide6.QtCore import QRectF, Qt, Signal, Slot
from PySide6.QtGui import QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import QGridLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .engine_access import fmt_bytes
from .panels import breakable
from .theme import COLORS

PARTS = ("weights", "gradients", "optimizer", "activations", "other")
CARD_MARKERS_GB = (24, 48, 80, 141)  # the markers drawn on the bar (the target list has more sizes)


def _host_ram() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - no comparison without psutil
        return None


def _parts_of_plan(plan) -> dict[str, float]:
    parts = {p: float(getattr(plan, p, 0) or 0) for p in PARTS}
    parts["other"] += float(getattr(plan, "anchor", 0) or 0)  # θ0 copies of L2-SP/EWC: shown with "other"
    return parts


def _parts_of_snapshot(snap) -> dict[str, float]:
    parts = {p: float(getattr(snap, p, 0) or 0) for p in PARTS[:4]}
    device_total = snap.nvml_used or snap.reserved or snap.allocated_peak
    parts["other"] = max(0.0, float(device_total or 0) - sum(parts.values()))
    return parts


MIN_SPAN = 150e9  # the bar always reaches past the 141 GB marker, so every card size is in view


class _BarCanvas(QWidget):
    ROW_H = 22
    TOP = 16

    def __init__(self, owner: "MemoryBar"):
        super().__init__(owner)
        self.owner = owner
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.fit_rows()

    def rows(self) -> list[tuple[str, dict[str, float] | None]]:
        """("plan", parts), then one measured row per device (a multi-GPU run has one per card)."""
        o = self.owner
        out = [("plan", _parts_of_plan(o.plan) if o.plan is not None else None)]
        snaps = o.measured_by_device
        if not snaps:
            out.append(("measured", None))
        elif len(snaps) == 1:
            out.append(("measured", _parts_of_snapshot(next(iter(snaps.values())))))
        else:
            out += [(dev, _parts_of_snapshot(snap)) for dev, snap in sorted(snaps.items())]
        return out

    def fit_rows(self) -> None:
        n = max(2, len(self.owner.measured_by_device) + 1)
        self.setFixedHeight(self.TOP + n * (self.ROW_H + 4) + 20)

    def scale(self) -> float:
        """Bytes across the full width: at least 150 GB (every card marker shows), more if the plan is larger;
        a CPU run spans its RAM and the plan (no GPU cards to mark)."""
        o = self.owner
        values = [o.capacity or 0, o.textbook or 0]
        values += [sum(parts.values()) for _name, parts in self.rows() if parts]
        return max(1.0 if o.on_cpu else MIN_SPAN, max(values) * 1.05)

    def legend_layout(self, fm, ybot: float, x_of) -> tuple[list[tuple[str, QRectF]], QRectF | None]:
        """Where the legend entries and the capacity label go: the label keeps right of the legend (it used to
        be drawn over it when the card's line fell under the legend)."""
        label_w = 70
        x = label_w
        entries = []
        for part in PARTS:
            w = 13 + fm.horizontalAdvance(part)
            entries.append((part, QRectF(x, ybot + 4, w, 14)))
            x += w + 12
        cap = None
        o = self.owner
        if o.capacity and o.capacity_label:
            tw = fm.horizontalAdvance(o.capacity_label) + 4
            right = x_of(o.capacity) - 4
            left = max(right - tw, x + 8)  # never over the legend
            left = min(left, max(x + 8, self.width() - tw - 2))
            cap = QRectF(left, ybot + 2, tw, 16)
        return entries, cap

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt name)
        o = self.owner
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().windowText().color()
        label_w, top = 70, self.TOP
        width = max(10, self.width() - label_w - 8)
        scale = self.scale()

        def x_of(b: float) -> float:
            return label_w + width * min(b, scale) / scale

        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        p.setFont(small)
        rows = self.rows()
        totals = []
        for i, (name, parts) in enumerate(rows):
            y = top + i * (self.ROW_H + 4)
            p.setPen(fg)
            p.drawText(QRectF(0, y, label_w - 6, self.ROW_H), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       name)
            p.setPen(QPen(fg.darker(150) if fg.lightness() > 128 else fg.lighter(250), 1))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(label_w, y, width, self.ROW_H))
            if parts:
                total = self._paint_parts(p, parts, y, x_of, red=(name == "plan" and not o.fits), fg=fg)
                if total is not None:
                    totals.append(total)
        if o.textbook:  # the seed's textbook 16N figure beside the plan
            xt = x_of(o.textbook)
            p.setPen(QPen(QColor("#b07aa1"), 2, Qt.PenStyle.DashLine))
            p.drawLine(int(xt), top - 2, int(xt), top + self.ROW_H + 2)
        ybot = top + len(rows) * (self.ROW_H + 4)
        for gb in () if o.on_cpu else CARD_MARKERS_GB:  # card markers (a CPU run has none)
            xm = x_of(gb * 1e9)
            p.setPen(QPen(fg, 1, Qt.PenStyle.DotLine))
            p.drawLine(int(xm), top - 4, int(xm), ybot)
            p.setPen(fg)
            p.drawText(int(xm) + 2, top - 4, f"{gb} GB")
        entries, cap_rect = self.legend_layout(p.fontMetrics(), ybot, x_of)
        if o.capacity:  # the chosen card's (or the RAM's) capacity
            xc = x_of(o.capacity)
            p.setPen(QPen(QColor("#d62728") if not o.fits else QColor("#2ca02c"), 2))
            p.drawLine(int(xc), top - 6, int(xc), ybot + 2)
            if cap_rect is not None:
                p.drawText(cap_rect, Qt.AlignmentFlag.AlignRight, o.capacity_label)
        for part, rect in entries:  # legend
            p.fillRect(QRectF(rect.x(), ybot + 6, 10, 10), QColor(COLORS[part]))
            p.setPen(fg)
            p.drawText(int(rect.x()) + 13, ybot + 15, part)
        for left, y, text in totals:
            self._paint_total(p, left, y, text, fg)
        p.end()

    def _paint_parts(self, p: QPainter, parts: dict[str, float], y: float, x_of, red: bool, fg):
        """Fill one row; returns where its total goes (drawn by paintEvent after the markers), or None."""
        x0 = x = float(x_of(0))
        total = 0.0
        for part in PARTS:
            total += parts.get(part, 0.0)
            w = x_of(total) - x
            if w > 0:
                color = QColor(COLORS[part])
                p.fillRect(QRectF(x, y + 1, w, self.ROW_H - 2), color.darker(110) if red else color)
                x += w
        if x - x0 < 3 and total > 0:  # a small model is a sliver on a 150 GB scale: keep it visible
            p.fillRect(QRectF(x0, y + 1, 3, self.ROW_H - 2), QColor(COLORS["weights"]))
            x = x0 + 3
        if x - x0 < 0.5 * self.width():  # the total beside the bar, so a sliver still reads
            text = fmt_bytes(total)
            left = x + 6
            if self.owner.capacity:  # never under the card's line: start right of it when they would cross
                xc = x_of(self.owner.capacity)
                if left - 3 <= xc <= left + p.fontMetrics().horizontalAdvance(text) + 3:
                    left = xc + 5
            return left, y, text
        return None

    def _paint_total(self, p: QPainter, left: float, y: float, text: str, fg) -> None:
        """A row's total, drawn last on a patch of background so no card marker runs through it."""
        w = p.fontMetrics().horizontalAdvance(text) + 4
        p.fillRect(QRectF(left - 2, y + 3, w, self.ROW_H - 6), self.palette().window())
        p.setPen(fg)
        p.drawText(QRectF(left, y, 160, self.ROW_H), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text)


class MemoryBar(QWidget):
    """Plan vs measured memory per GPU against a chosen card (or the host's RAM for a CPU run)."""

    applyRequested = Signal(dict)  # config leaves of an advice row's Apply button
    contentChanged = Signal()  # the summary or advice changed: its pane may need another height

    MAX_ADVICE = 4

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("memoryBar")
        self.plan = None
        self.how = ""  # how the plan shown was made (closed form, then the traced plan: gui/traced_plan.py)
        self.textbook: float | None = None
        self.advice = None
        self.measured = None  # the latest MemorySnapshot (any device)
        self.measured_by_device: dict[str, object] = {}  # device ("cuda:0", "cpu") → its latest snapshot
        self.capacity: float | None = None
        self.capacity_label = ""
        self.fits = True
        self.on_cpu = False  # the run goes to the CPU: plan against the RAM, no card markers, no CUDA context
        self.other_machine = False  # the plan is for a card this machine does not have (no host RAM comparison)
        self.actions: list[tuple[str, dict, int, bool]] = []  # (change, leaves, bytes saved, makes it fit)
        self.shown_advice: list[tuple[str, dict, int, bool]] = []  # the rows under the bar now
        self.canvas = _BarCanvas(self)
        self.summary = QLabel("Memory plan: choose a model.")
        self.summary.setWordWrap(True)
        # a long message (a missing model's path) wraps in the window's width instead of widening the window
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(2)
        lay.addWidget(self.canvas)
        lay.addWidget(self.summary)
        self.advice_box = QWidget()
        self.advice_box.setObjectName("adviceBox")
        self.advice_grid = QGridLayout(self.advice_box)
        self.advice_grid.setContentsMargins(0, 0, 0, 0)
        self.advice_grid.setVerticalSpacing(1)
        self.advice_grid.setColumnStretch(1, 1)
        self.advice_grid.setColumnStretch(4, 1)
        self.advice_grid.setHorizontalSpacing(6)
        self.advice_buttons: list[QPushButton] = []
        self.advice_box.setVisible(False)
        lay.addWidget(self.advice_box)

    def set_capacity(self, capacity_bytes: float | None, label: str) -> None:
        self.capacity, self.capacity_label = capacity_bytes, label
        self._refresh()

    def set_plan(self, plan, advice=None, actions=None, on_cpu: bool | None = None,
                 other_machine: bool = False, how: str = "") -> None:
        """``plan``: MemoryBreakdown; ``advice``: the solver's Advice for the chosen card (or None); ``actions``:
        the changes to offer when it does not fit, as (change, config leaves, bytes saved, makes it fit);
        ``on_cpu``: the plan is for the host's RAM."""
        if on_cpu is not None:
            self.on_cpu = on_cpu
        self.other_machine = other_machine
        self.plan, self.advice, self.how = plan, advice, how
        self.actions = list(actions or [])
        self.textbook = float(getattr(plan, "textbook", 0) or 0) if plan is not None else None
        self.fits = True if advice is None else bool(getattr(advice, "fits", True))
        if plan is not None and advice is None and self.capacity:
            self.fits = float(plan.total) <= self.capacity
        self._refresh()

    def set_traced(self, plan, how: str) -> None:
        """The traced plan of the same run in place of the closed form; the advice rows stay the solver's."""
        self.plan, self.how = plan, how
        self.textbook = float(getattr(plan, "textbook", 0) or 0)
        if self.capacity:
            self.fits = float(plan.total) <= self.capacity
        self._refresh()

    def set_how(self, how: str) -> None:
        self.how = how
        self._refresh()

    def set_unavailable(self, message: str) -> None:
        self.plan = self.advice = None
        self.actions = []
        self._fill_advice([])
        self.textbook = None
        self.fits = True
        self.summary.setText(html.escape(breakable(message)))
        self.canvas.update()
        self.contentChanged.emit()

    def set_measured(self, snapshot) -> None:
        """A MemorySnapshot: each device keeps its own row (one per GPU of a multi-GPU run)."""
        self.measured = snapshot
        new_device = snapshot.device not in self.measured_by_device
        self.measured_by_device[snapshot.device] = snapshot
        if new_device:
            self.canvas.fit_rows()
        self._refresh()

    def clear_measured(self) -> None:
        self.measured = None
        self.measured_by_device.clear()
        self.canvas.fit_rows()
        self._refresh()

    def _refresh(self) -> None:
        lines = []
        if self.plan is not None:
            parts = _parts_of_plan(self.plan)
            detail = " · ".join(f"{k} {fmt_bytes(v)}" for k, v in parts.items())
            anchor = getattr(self.plan, "anchor", 0)
            if anchor:
                detail += f" (other includes θ0 anchor {fmt_bytes(anchor)})"
            where = "in CPU RAM (no CUDA context)" if self.on_cpu else f"per GPU, for {self.card_words()}"
            span = "" if self.on_cpu else ", so the 141 GB card shows"
            lines.append(f"<b>Plan {fmt_bytes(sum(parts.values()))}</b> {where} ({detail}); "
                         f"textbook 16N + s·b·d·L·12: {fmt_bytes(self.textbook)}. "
                         f"<small>(bar 0–{fmt_bytes(self.canvas.scale())}{span})</small>")
            if self.how:
                lines.append(f"<small>{html.escape(self.how)}</small>")
        host, ram = getattr(self.plan, "host", 0) or 0, _host_ram()
        # a GPU run still needs the host to load and save (not said for a card planned for another machine)
        if host and ram and host > ram and not self.on_cpu and not self.other_machine:
            lines.append(f"<span style='color:#d62728'><b>Host RAM:</b> this run needs about {fmt_bytes(host)} of "
                         f"host memory; this machine has {fmt_bytes(ram)}.</span>")
        for dev, m in sorted(self.measured_by_device.items()):
            lines.append(f"<b>Measured</b> at step {m.step} on {dev}: weights {fmt_bytes(m.weights)}, "
                         f"gradients {fmt_bytes(m.gradients)}, optimizer {fmt_bytes(m.optimizer)}, "
                         f"allocator peak {fmt_bytes(m.allocated_peak)}, NVML {fmt_bytes(m.nvml_used)}.")
        shown = []
        if self.plan is not None and not self.fits:
            shown = self.offered()
            if shown:
                tail = " Each change below alone; Apply sets it in the form."
            elif self.actions or getattr(self.advice, "suggestions", None):
                tail = " No single change makes it fit: combine the savings below, or use more or larger GPUs."
            else:
                tail = " Lower the batch size or sequence length, or use more or larger GPUs."
            lines.append("<span style='color:#d62728'><b>Does not fit on " + self.card_words() + ".</b>"
                         + tail + "</span>")
            if not shown:
                shown = self.offered(only_fitting=False)
        self.shown_advice = shown
        self._fill_advice(shown)
        self.summary.setText("<br>".join(lines) or "Memory plan: choose a model.")
        self.canvas.update()
        self.contentChanged.emit()

    def card_words(self) -> str:
        """"a 48 GB card", "GPU 0: NVIDIA H100 (80 GB)": the card this plan is for."""
        label = self.capacity_label or "the chosen card"
        if not label.endswith(" GB card") or label.startswith("Custom"):
            return label
        return ("an " if label.startswith(("8", "11 ", "18 ")) else "a ") + label  # "an 8 GB card", "an 80 GB card"

    def offered(self, only_fitting: bool = True) -> list[tuple[str, dict, int, bool]]:
        """The advice rows: changes that make the plan fit (or the largest savings), each with a gain that
        reads as more than zero (under 0.5 % of the plan is noise) and a field to set."""
        total = float(getattr(self.plan, "total", 0) or 0)
        rows = [a for a in self.actions if a[2] > 0.005 * total and (a[3] or not only_fitting)]
        return rows[:self.MAX_ADVICE]

    def _fill_advice(self, rows) -> None:
        while self.advice_grid.count():
            item = self.advice_grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.advice_buttons = []
        for i, (desc, leaves, saved, fits) in enumerate(rows):
            gain = QLabel(f"−{fmt_bytes(saved)}")
            gain.setStyleSheet("color: #2ca02c; font-weight: bold;" if fits else "")
            text = QLabel(desc + (" (fits)" if fits else ""))
            text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            button = QPushButton("Apply")
            button.setObjectName(f"applyAdvice{i}")
            button.setEnabled(bool(leaves))
            button.setToolTip(", ".join(f"{k} = {v}" for k, v in leaves.items()) if leaves
                              else "Not a field of the form: tick more GPUs in the Hardware tab.")
            button.setProperty("leaves", leaves)
            button.clicked.connect(self._apply_clicked)
            r, c = divmod(i, 2)  # two per row: the advice must not push the window past 800 pixels
            self.advice_grid.addWidget(gain, r, 3 * c)
            self.advice_grid.addWidget(text, r, 3 * c + 1)
            self.advice_grid.addWidget(button, r, 3 * c + 2)
            self.advice_buttons.append(button)
        self.advice_box.setVisible(bool(rows))

    @Slot()
    def _apply_clicked(self) -> None:
        button = self.sender()
        if isinstance(button, QPushButton):
            self.applyRequested.emit(dict(button.property("leaves") or {}))
