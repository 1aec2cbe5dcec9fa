"""Light and dark themes: a Fusion palette for the widgets and matching pyqtgraph colours for the plots."""
from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget

THEMES = ("light", "dark")

# Curve colours that read on both backgrounds.
COLORS = {
    "train": "#1f77b4", "eval": "#ff7f0e", "retention": "#2ca02c", "lr": "#9467bd", "grad": "#d62728",
    "tps": "#17becf", "mem": "#8c564b",
    "weights": "#4e79a7", "gradients": "#f28e2b", "optimizer": "#e15759", "activations": "#76b7b2",
    "other": "#9c9c9c", "measured": "#59a14f", "accuracy": "#e377c2", "macro_f1": "#bcbd22",
}


def _dark_palette() -> QPalette:
    p = QPalette()
    base, alt, text, window = QColor(30, 30, 34), QColor(42, 42, 48), QColor(225, 225, 230), QColor(38, 38, 44)
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, alt)
    p.setColor(QPalette.ColorRole.ToolTipBase, alt)
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, alt)
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, QColor("#ff6b6b"))
    p.setColor(QPalette.ColorRole.Highlight, QColor(64, 128, 200))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.ColorRole.Link, QColor(110, 170, 255))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor(140, 140, 150))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 128))
    return p


def plot_colors(theme: str) -> tuple[str, str]:
    """(background, foreground) for pyqtgraph."""
    return ("#1e1e22", "#d0d0d8") if theme == "dark" else ("#ffffff", "#303030")


def apply_theme(theme: str, root: QWidget | None = None) -> None:
    """Switch the whole application (and the plots under ``root``) to ``theme``."""
    theme = theme if theme in THEMES else "light"
    app = QApplication.instance()
    app.setStyle("Fusion")
    app.setPalette(_dark_palette() if theme == "dark" else app.style().standardPalette())
    bg, fg = plot_colors(theme)
    pg.setConfigOptions(background=bg, foreground=fg, antialias=True)
    if root is not None:
        for w in root.findChildren(pg.PlotWidget):
            w.setBackground(bg)
            item = w.getPlotItem()
            for name in ("left", "bottom", "right", "top"):
                axis = item.getAxis(name)
                axis.setPen(fg)
                axis.setTextPen(fg)
            item.titleLabel.setText(item.titleLabel.text, color=fg)
