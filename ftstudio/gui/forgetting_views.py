"""Views of the seed's forgetting science: the drift heat strip (‖θ−θ0‖/‖θ0‖ per layer over steps, from
DriftMetrics events) and the per-layer learning-rate bars of ULMFiT's discriminative rates.

The bars are computed from the model description (ModelInfo.num_layers), not from a loaded model, so the GUI
thread never loads weights: groups embeddings, layer.0 … layer.{L-1}, head, with depth l from the top
(head 0, layer.{L-1} 1, …, layer.0 L, embeddings L+1) and multiplier ξ^-l — engine/optim.py's rule
(``layer_depths`` / ``layer_lr_scales``) for a model whose groups all hold parameters.
"""
from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF

from .theme import COLORS

MAX_COLUMNS = 400  # the strip resamples onto at most this many step columns


def layer_lr_bars(num_layers: int, xi: float) -> dict[str, float]:
    """Group name (bottom → top) → learning-rate multiplier ξ^-l, as engine.optim.layer_lr_scales gives it."""
    groups = ["embeddings", *(f"layer.{i}" for i in range(num_layers)), "head"]
    return {g: float(xi) ** -(len(groups) - 1 - i) for i, g in enumerate(groups)}


def short_name(group: str) -> str:
    return {"embeddings": "emb", "head": "head"}.get(group, group.replace("layer.", "L"))


def depth_order(names) -> list[str]:
    """Layer groups bottom → top: embeddings, the blocks by number (layer.2 before layer.10), then the head;
    metrics read back from JSON may come in any order."""
    def key(name: str) -> tuple[int, int, str]:
        if name == "embeddings":
            return (0, 0, name)
        if name == "head":
            return (3, 0, name)
        if name.startswith("layer.") and name[6:].isdigit():
            return (1, int(name[6:]), name)
        return (2, 0, name)

    return sorted(names, key=key)


def _tick_labels(names: list[str], most: int = 10) -> list[tuple[float, str]]:
    """Every k-th group's name (the bottom and top always), so a 40-layer model's axis stays legible."""
    k = max(1, math.ceil(len(names) / most))
    keep = set(range(0, len(names), k)) | {len(names) - 1}
    return [(i, short_name(n)) for i, n in enumerate(names) if i in keep]


class DriftStrip(pg.PlotWidget):
    """Heat map of per-layer drift: steps along x, layer groups bottom (embeddings) → top (head) along y."""

    def __init__(self, parent=None):
        super().__init__(parent=parent)
        self.setTitle("Drift from θ0 per layer", size="9pt")
        self.setToolTip("‖θ−θ0‖/‖θ0‖ of each layer group (embeddings at the bottom, head at the top) over "
                        "the steps, on a log colour scale from dark (least) to yellow (most). From DriftMetrics "
                        "events: set drift_every, or use l2sp/ewc.")
        self.setObjectName("driftStrip")
        self.setMinimumHeight(95)
        self.setLabel("bottom", "step")
        self.setLabel("left", "layer")
        self.setMouseEnabled(x=False, y=False)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setColorMap(pg.colormap.get("viridis"))
        self.addItem(self.image)
        self.colorbar = pg.ColorBarItem(values=(-6, -5), colorMap=pg.colormap.get("viridis"), width=12,
                                        interactive=False, colorMapMenu=False)
        self.colorbar.setImageItem(self.image, insert_in=self.getPlotItem())
        # its ends are named in the title ("log colour 1e-04…2e-02"): tick labels beside the bar ran past the
        # widget's edge inside the plot's layout and read "1"
        self.colorbar.axis.setStyle(showValues=False)
        self.colorbar.axis.setWidth(4)
        self.getPlotItem().layout.setContentsMargins(1, 1, 16, 1)  # the bar's column runs over the right edge
        self.colorbar.setVisible(False)  # a scale with nothing on it until drift arrives
        self.empty = pg.TextItem("no drift yet:\nset drift_every, l2sp or ewc", anchor=(0.5, 0.5),
                                 color=COLORS["other"])
        self.addItem(self.empty)
        self.empty.setPos(0.5, 0.5)
        self.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)  # centred text, no stray axis scale
        self.steps: list[int] = []
        self.rows: list[dict[str, float]] = []
        self.names: list[str] = []
        self.dirty = False
        self.last_matrix: np.ndarray | None = None  # layers × columns, the drift values behind the colours

    def add(self, step: int, layers: dict[str, float]) -> None:
        if not layers:
            return
        new = [n for n in layers if n not in self.names]
        if new:
            self.names = depth_order(self.names + new)
        if self.steps and step <= self.steps[-1]:
            if step == self.steps[-1]:  # measured twice at one step (an evaluation and drift_every agree)
                self.rows[-1] = dict(layers)
                self.dirty = True
            return
        self.steps.append(int(step))
        self.rows.append(dict(layers))
        self.dirty = True

    def clear_data(self) -> None:
        self.steps.clear()
        self.rows.clear()
        self.names.clear()
        self.image.clear()
        self.last_matrix = None
        self.getPlotItem().getAxis("left").setTicks(None)
        self.setTitle("Drift from θ0 per layer", size="9pt")
        self.setRange(xRange=(0, 1), yRange=(0, 1), padding=0)
        self.empty.setVisible(True)
        self.colorbar.setVisible(False)
        self.dirty = False

    def matrix(self) -> tuple[np.ndarray, float, float]:
        """(layers × columns array, first step, step width of a column): each column holds the latest
        measurement at or before its step, so irregular measurement steps still share one regular grid."""
        steps = np.asarray(self.steps, dtype=float)
        values = np.array([[r.get(n, np.nan) for n in self.names] for r in self.rows], dtype=float)
        if len(steps) == 1:
            return values.T, steps[0] - 0.5, 1.0
        span = steps[-1] - steps[0]
        width = max(span / MAX_COLUMNS, float(np.min(np.diff(steps))), 1.0)
        grid = steps[0] + width * np.arange(int(math.floor(span / width)) + 1)
        idx = np.searchsorted(steps, grid + 1e-9, side="right") - 1
        return values[idx].T, steps[0], width

    def flush(self) -> None:
        if not self.dirty or not self.rows:
            return
        self.dirty = False
        m, x0, width = self.matrix()
        self.last_matrix = m
        # Log colour scale: a freshly initialised head drifts 100× more than the pre-trained blocks, and on a
        # linear scale it would leave every other row the same dark colour.
        positive = m[np.isfinite(m) & (m > 0)]
        top = float(positive.max()) if positive.size else 1e-6
        floor = max(float(positive.min()) if positive.size else top / 10, top * 1e-4)
        logs = np.log10(np.clip(np.nan_to_num(m, nan=floor), floor, None))
        levels = (math.log10(floor), math.log10(top) + 1e-9)
        self.image.setImage(logs, autoLevels=False, levels=levels)
        self.colorbar.setLevels(levels)
        self.image.setRect(QRectF(x0, 0.0, width * m.shape[1], float(m.shape[0])))
        self.getPlotItem().getAxis("left").setTicks([[(i + 0.5, t) for i, t in _tick_labels(self.names)]])
        self.empty.setVisible(False)
        self.colorbar.setVisible(True)
        self.setXRange(x0, x0 + width * m.shape[1], padding=0)
        self.setYRange(0, m.shape[0], padding=0)
        self.setTitle(f"Drift from θ0 per layer (log colour {floor:.0e}…{top:.0e})", size="9pt")


class LayerRateBars(pg.PlotWidget):
    """Each layer group's peak learning rate lr·ξ^-l as a horizontal bar, bottom (embeddings) → top (head)."""

    def __init__(self, parent=None):
        super().__init__(parent=parent)
        self.setObjectName("layerRateBars")
        self.setMinimumHeight(170)
        self.setMaximumHeight(220)
        self.setMouseEnabled(x=False, y=False)
        self.setLabel("bottom", "peak learning rate")
        self.getPlotItem().hideButtons()
        self.bars: pg.BarGraphItem | None = None
        self.rates: dict[str, float] = {}
        self.setToolTip("ULMFiT discriminative rates: the group at depth l from the top trains at lr·ξ^-l "
                        "(head l=0, last block l=1, …, embeddings lowest). Drawn from the model's layer count; "
                        "a model without head parameters shifts every depth down by one.")

    def show_rates(self, num_layers: int, xi: float, lr: float) -> None:
        self.rates = {g: lr * s for g, s in layer_lr_bars(num_layers, xi).items()}
        names = list(self.rates)
        if self.bars is not None:
            self.removeItem(self.bars)
        self.bars = pg.BarGraphItem(x0=0, y=np.arange(len(names)), height=0.75, width=list(self.rates.values()),
                                    brush=COLORS["lr"], pen=None)
        self.addItem(self.bars)
        self.getPlotItem().getAxis("left").setTicks([_tick_labels(names, most=6)])
        self.setXRange(0, lr * 1.02, padding=0)
        self.setYRange(-0.6, len(names) - 0.4, padding=0)
        low = min(self.rates.values())
        self.setTitle(f"Per-layer peak LR, ξ = {xi:g}: head {lr:.2g} … emb {low:.2g}", size="9pt")
