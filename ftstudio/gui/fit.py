"""What lets the window fit every screen and change nothing the user did not mean to change.

- :func:`scrolled` and :class:`ScrollTabs`: a panel whose content is taller (or wider) than its room scrolls
  instead of pushing the window's minimum size past a small screen or crushing its rows into strips.
- :class:`PlotGrid`: the monitor's plots in as many columns as the width holds (3, 2 or 1: stacked when narrow),
  each at least tall enough for its tick labels, in a scroll area when the height does not hold them all.
- :class:`ElidedLabel`: one line that re-elides when it is resized (the whole text in its tooltip).
- :func:`fit_to_screen`: the window opens inside the available area of its screen, whatever was saved.
- :class:`WheelGuard`: an application event filter: the wheel over a spin box, combo box or slider that does
  not have focus scrolls the form around it (Qt's own wheel-focus would change the value under the pointer).
"""
from __future__ import annotations

import math

from PySide6.QtCore import QEvent, QObject, QRect, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (QAbstractScrollArea, QAbstractSlider, QAbstractSpinBox, QApplication, QComboBox,
                               QFrame, QGraphicsView, QGridLayout, QLabel, QScrollArea, QScrollBar, QSizePolicy,
                               QTabWidget, QWidget)


def scrolled(widget: QWidget, horizontal: bool = False) -> QScrollArea:
    """``widget`` in a frameless scroll area that resizes it: it grows with the room and scrolls below its
    minimum size (horizontally too when ``horizontal``)."""
    area = QScrollArea()
    area.setObjectName(f"{widget.objectName() or 'panel'}Scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    if not horizontal:
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(widget)
    area.setMinimumHeight(40)
    return area


class ScrollTabs(QTabWidget):
    """Tabs whose pages may be wrapped in scroll areas; ``setCurrentWidget`` and ``page_of`` accept the panel
    itself, so callers need not know about the wrapper."""

    def add_scrolled(self, widget: QWidget, title: str, horizontal: bool = False) -> int:
        return self.addTab(scrolled(widget, horizontal), title)

    def page_of(self, widget: QWidget) -> QWidget | None:
        for i in range(self.count()):
            page = self.widget(i)
            if page is widget or page.isAncestorOf(widget):
                return page
        return None

    def setCurrentWidget(self, widget: QWidget) -> None:  # noqa: N802 (Qt name)
        page = self.page_of(widget)
        if page is not None:
            super().setCurrentWidget(page)

    def current_shows(self, widget: QWidget) -> bool:
        page = self.currentWidget()
        return page is not None and (page is widget or page.isAncestorOf(widget))


class PlotGrid(QWidget):
    """Plots laid out in ``columns_for(width)`` columns, reflowed on resize; each plot keeps ``min_h`` pixels
    (ticks and title readable) and the whole grid scrolls in the monitor when the height is short."""

    def __init__(self, plots: list[QWidget], min_w: int = 240, min_h: int = 150, parent: QWidget | None = None):
        super().__init__(parent)
        self.plots, self.min_w, self.min_h = plots, min_w, min_h
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(4)
        self.columns = 0
        for p in plots:
            p.setMinimumSize(min_w // 2, min_h)
            p.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.reflow(2)

    def columns_for(self, width: int) -> int:
        if width >= 3 * self.min_w + 300:
            return 3
        return 2 if width >= 2 * self.min_w else 1

    def reflow(self, columns: int) -> None:
        if columns == self.columns:
            return
        self.columns = columns
        for p in self.plots:
            self.grid.removeWidget(p)
        for r in range(self.grid.rowCount()):
            self.grid.setRowStretch(r, 0)
        for c in range(self.grid.columnCount()):
            self.grid.setColumnStretch(c, 0)
        for i, p in enumerate(self.plots):
            self.grid.addWidget(p, i // columns, i % columns)
        for r in range(math.ceil(len(self.plots) / columns)):
            self.grid.setRowStretch(r, 1)
        for c in range(columns):
            self.grid.setColumnStretch(c, 1)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.reflow(self.columns_for(event.size().width()))
        super().resizeEvent(event)


class ElidedLabel(QLabel):
    """One line of text elided to the width it has now (and again after each resize); the whole text is its
    tooltip. The middle goes first, so the start (what happened) and the end (a file name) both stay."""

    def __init__(self, text: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(80)
        self.set_full_text(text)

    def set_full_text(self, text: str) -> None:
        self.full = text
        self.setToolTip(text if self.elided(text) != text else "")
        self.setText(self.elided(text))

    def elided(self, text: str) -> str:
        return self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle, max(40, self.width() - 4))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self.setText(self.elided(self.full))
        self.setToolTip(self.full if self.text() != self.full else "")


def fit_to_screen(window: QWidget) -> QRect:
    """Resize and move ``window`` so its frame lies inside the available area of the screen it is on (or the
    primary screen): a geometry saved on a larger monitor, or the default size on a small laptop, must not put
    half the window off screen. Returns the available area used."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return QRect()
    avail = screen.availableGeometry()
    frame = window.frameGeometry()
    extra_w = max(0, frame.width() - window.width())  # title bar and borders (none before the first show)
    extra_h = max(0, frame.height() - window.height())
    w = max(1, min(window.width(), avail.width() - extra_w))
    h = max(1, min(window.height(), avail.height() - extra_h))
    window.resize(w, h)
    x = min(max(frame.x(), avail.x()), avail.right() + 1 - w - extra_w)
    y = min(max(frame.y(), avail.y()), avail.bottom() + 1 - h - extra_h)
    window.move(x, y)
    return avail


class WheelGuard(QObject):
    """Application event filter: a wheel event over an unfocused value control scrolls the nearest scroll area
    around it instead (or is dropped where there is none); a focused control still takes the wheel. Controls
    also stop taking focus from the wheel itself (Qt's WheelFocus), so one notch cannot focus and change them."""

    GUARDED = (QAbstractSpinBox, QComboBox, QAbstractSlider)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt name)
        if event.type() != QEvent.Type.Wheel or not isinstance(obj, self.GUARDED) or isinstance(obj, QScrollBar):
            return False
        if obj.focusPolicy() == Qt.FocusPolicy.WheelFocus:
            obj.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        if obj.hasFocus():
            return False
        area = obj.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:
            QApplication.sendEvent(area.viewport(), event)
        return True  # consumed: the control's value stays what the user set


def plots_take_no_focus(root: QWidget) -> int:
    """Tab walks through the controls a user edits, not through every plot (a pyqtgraph PlotWidget is a
    QGraphicsView, which takes focus by default); returns how many views were changed."""
    views = root.findChildren(QGraphicsView)
    for v in views:
        v.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    return len(views)
