"""The pieces the monitor's live plots are made of: a curve's points (:class:`Series`, appended by the drain and
pushed on redraw), the plot itself (:func:`make_plot`), axes that read in bytes or carry their own scale, and the
key in a plot's title line."""
from __future__ import annotations

import bisect
import html
import math

import pyqtgraph as pg
from PySide6.QtCore import Qt


def keyed_title(plot: pg.PlotWidget, title: str, series: list["Series"]) -> None:
    """The plot's key in its title line: an in-plot legend covered the curves of these small plots."""
    keys = []
    for s in series:
        mark = {"t": "▲", "o": "●", "s": "■", "d": "◆"}.get(s.curve.opts["symbol"], "━")
        color = s.curve.opts["pen"].color().name()
        keys.append(f"<span style='color:{color}'>{mark} {html.escape(s.curve.opts['name'])}</span>")
    plot.setTitle(title + (": " + " · ".join(keys) if keys else ""), size="9pt")


class BytesAxis(pg.AxisItem):
    """A y axis in bytes whose ticks read "0 MB, 100 MB, 200 MB" or "20 GB, 40 GB": one unit for the whole axis
    and only as many decimals as the tick spacing needs (no "363.4611564" when the value is flat)."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph name)
        top = max([abs(v) for v in values] + [spacing])
        unit, div = next(((u, d) for u, d in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if top >= d), ("B", 1.0))
        step = spacing / div
        decimals = 0 if step >= 1 else min(3, int(math.ceil(-math.log10(step))))
        return [f"{v / div:.{decimals}f} {unit}" for v in values]


class ScientificAxis(pg.AxisItem):
    """Ticks that carry their own scale ("4e-05", "0.5"): no "(x1e-06)" beside the label for a learning rate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enableAutoSIPrefix(False)

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph name)
        return [f"{v:.2g}" if v else "0" for v in values]


def make_plot(title: str, ylabel: str, object_name: str | None = None, left_axis=None) -> pg.PlotWidget:
    w = pg.PlotWidget(title=title, axisItems={"left": left_axis} if left_axis is not None else None)
    if object_name:
        w.setObjectName(object_name)
    w.setLabel("bottom", "step")
    w.setLabel("left", ylabel)
    w.showGrid(x=True, y=True, alpha=0.2)
    w.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # Tab walks through the controls, not through the plots
    item = w.getPlotItem()
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)
    return w


class Series:
    """One curve's points, appended by the drain and pushed to its PlotDataItem on redraw."""

    def __init__(self, plot: pg.PlotWidget, color: str, name: str, symbol: str | None = None):
        self.x: list[float] = []
        self.y: list[float] = []
        self.curve = plot.plot([], [], pen=pg.mkPen(color, width=2), name=name,
                               symbol=symbol, symbolSize=6, symbolBrush=color)
        self.dirty = False

    def append(self, x: float, y: float | None) -> None:
        if y is None or y != y:  # None or NaN: leave a gap rather than a spike to zero
            return
        self.x.append(x)
        self.y.append(float(y))
        self.dirty = True

    def drop_after(self, x: float) -> int:  # removes the points past x (steps a resume reruns): how many
        keep = bisect.bisect_right(self.x, x)
        n, self.dirty = len(self.x) - keep, self.dirty or keep < len(self.x)
        del self.x[keep:], self.y[keep:]
        return n

    def clear(self) -> None:
        self.x.clear()
        self.y.clear()
        self.curve.setData([], [])
        self.dirty = False

    def flush(self) -> None:
        if self.dirty:
            self.curve.setData(self.x, self.y)
            self.dirty = False


class TwinAxis:
    """A second y axis on the right of a plot (pyqtgraph's MultiplePlotAxes recipe): its own ViewBox, x linked
    to the plot's, kept on the plot's geometry. ``plot()`` adds a curve to it, as PlotWidget.plot does; ``y_range`` is
    its range until ``vb.setYRange`` sets another (the twin never auto-ranges)."""

    def __init__(self, plot: pg.PlotWidget, label: str, y_range: tuple[float, float], color: str | None = None):
        item = plot.getPlotItem()
        self.vb = pg.ViewBox()
        item.showAxis("right")
        item.scene().addItem(self.vb)
        axis = item.getAxis("right")
        axis.linkToView(self.vb)
        axis.setLabel(label, **({"color": color} if color else {}))
        axis.setWidth(48)  # "0.8" and the rotated label (the default width clipped both to one character)
        self.vb.setXLink(item)
        # the plot's x range rules (linked both ways: an auto-ranging twin would narrow the loss curve's steps)
        self.vb.enableAutoRange(x=False, y=False)
        self.vb.setYRange(*y_range, padding=0.02)
        self.vb.setMouseEnabled(x=False, y=False)
        self.item = item
        item.vb.sigResized.connect(self.sync)
        self.axis = axis
        self.sync()

    def set_shown(self, on: bool) -> None:
        self.item.showAxis("right", on)
        self.vb.setVisible(on)
        self.sync()

    @property
    def shown(self) -> bool:
        return self.axis.isVisible()

    def sync(self, *_args) -> None:
        self.vb.setGeometry(self.item.vb.sceneBoundingRect())
        self.vb.linkedViewChanged(self.item.vb, self.vb.XAxis)

    def plot(self, *args, **kwargs) -> pg.PlotDataItem:
        curve = pg.PlotDataItem(*args, **kwargs)
        self.vb.addItem(curve)
        return curve
