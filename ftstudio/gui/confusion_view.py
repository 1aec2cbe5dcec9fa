"""ConfusionHeatmap: a confusion matrix as a labelled heat map that fits the space it is given. Rows are the
true classes (named on the left, numbered), columns the predicted ones (numbered alike); each cell shows its
count and its share of the row (the colour is that share, so a class with few rows reads like a large one);
the diagonal is what the model got right. Hovering a cell names both classes.
"""
from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

LOW, HIGH = QColor(247, 251, 255), QColor(8, 69, 148)  # the "Blues" ends: no share → high share


def share_color(share: float) -> QColor:
    s = max(0.0, min(1.0, share))
    return QColor(int(LOW.red() + (HIGH.red() - LOW.red()) * s), int(LOW.green() + (HIGH.green() - LOW.green()) * s),
                  int(LOW.blue() + (HIGH.blue() - LOW.blue()) * s))


class ConfusionHeatmap(QWidget):
    HEADER = 18  # the column numbers above the grid
    FOOTER = 16  # the axis words under it

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("confusionHeatmap")
        self.labels: list[str] = []
        self.matrix: list[list[int]] = []
        self.mode = "auto"  # what a cell prints: "auto" (count and share when there is room), "count", "share"
        self.setMouseTracking(True)
        self.setMinimumSize(160, 100)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        return QSize(360, 300)

    def set_matrix(self, labels: list[str], matrix: list[list[int]]) -> None:
        self.labels, self.matrix = list(labels), [list(r) for r in matrix]
        self.update()

    def share(self, i: int, j: int) -> float:
        row = sum(self.matrix[i])
        return self.matrix[i][j] / row if row else 0.0

    def label_width(self) -> float:
        fm = self.fontMetrics()
        widest = max([fm.horizontalAdvance(f"{i + 1} {lab}") for i, lab in enumerate(self.labels)] + [40])
        return min(float(widest + 8), self.width() * 0.38)

    def cell(self) -> float:
        n = max(1, len(self.labels))
        return max(4.0, min((self.width() - self.label_width() - 4) / n,
                            (self.height() - self.HEADER - self.FOOTER) / n))

    def cell_rect(self, i: int, j: int) -> QRectF:
        c = self.cell()
        return QRectF(self.label_width() + j * c, self.HEADER + i * c, c, c)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.update()

    def cell_font(self) -> QFont:
        """The window's font, made smaller (to 6 pt at least) until "100%" fits a cell."""
        font = QFont(self.font())
        size = font.pointSizeF() if font.pointSizeF() > 0 else 9.0
        while size > 6.0 and QFontMetrics(font).horizontalAdvance("100%") + 4 > self.cell():
            size -= 0.5
            font.setPointSizeF(size)
        return font

    def cell_text(self, i: int, j: int) -> str:
        """What a cell prints: count and row share when there is room (mode "auto"), else the count, or the
        share alone (mode "share")."""
        count, c = self.matrix[i][j], self.cell()
        fm = QFontMetrics(self.cell_font())
        share = f"{self.share(i, j):.0%}"
        if self.mode == "share":
            return share if c >= fm.horizontalAdvance(share) + 2 else ""
        if self.mode == "auto" and c >= 2.2 * fm.height() and c >= fm.horizontalAdvance(share) + 4:
            return f"{count}\n{share}"
        return str(count) if c >= fm.horizontalAdvance(str(count)) + 2 else ""

    def paintEvent(self, _event) -> None:  # noqa: N802 (Qt name)
        if not self.matrix:
            return
        p = QPainter(self)
        fg = self.palette().windowText().color()
        n, c, lw = len(self.labels), self.cell(), self.label_width()
        fm = p.fontMetrics()
        cell_font = self.cell_font()
        for i in range(n):
            y = self.HEADER + i * c
            p.setPen(fg)
            name = fm.elidedText(f"{i + 1} {self.labels[i]}", Qt.TextElideMode.ElideRight, int(lw - 6))
            p.drawText(QRectF(0, y, lw - 6, c), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, name)
            p.drawText(QRectF(lw + i * c, 0, c, self.HEADER), Qt.AlignmentFlag.AlignCenter, str(i + 1))
            for j in range(n):
                rect = self.cell_rect(i, j)
                share = self.share(i, j)
                p.fillRect(rect, share_color(share))
                if i == j:
                    p.setPen(QPen(QColor("#2ca02c"), 2))
                    p.drawRect(rect.adjusted(1, 1, -1, -1))
                text = self.cell_text(i, j)
                if text:
                    p.setFont(cell_font)
                    p.setPen(QColor(255, 255, 255) if share > 0.55 else QColor(20, 20, 20))
                    p.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
                    p.setFont(self.font())
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))
        p.setFont(small)
        p.setPen(fg)
        footer = QFontMetrics(small).elidedText("columns: predicted · rows: true class · colour: share of the row",
                                                Qt.TextElideMode.ElideRight, max(10, self.width() - 4))
        p.drawText(QRectF(0, self.HEADER + n * c + 2, self.width(), self.FOOTER), Qt.AlignmentFlag.AlignCenter, footer)
        p.end()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 (Qt name)
        pos = event.position()
        for i in range(len(self.labels)):
            for j in range(len(self.labels)):
                if self.cell_rect(i, j).contains(pos):
                    QToolTip.showText(event.globalPosition().toPoint(),
                                      f"true {self.labels[i]}, predicted {self.labels[j]}: {self.matrix[i][j]} "
                                      f"({self.share(i, j):.0%} of the {sum(self.matrix[i])} true {self.labels[i]})",
                                      self)
                    return
        QToolTip.hideText()
