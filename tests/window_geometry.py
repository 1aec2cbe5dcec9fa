"""Geometry checks of the real main window at one screen size and scale factor (run in its own process, since
QT_SCALE_FACTOR and the offscreen screen are fixed when Qt starts).

    QT_SCALE_FACTOR=1.5 python tests/window_geometry.py 1920x1080 [--shots DIR] [--frame 80]

The offscreen platform is given one screen of that many device pixels; with QT_SCALE_FACTOR s the window works
in (W/s)×(H/s) logical pixels, as on a laptop at that scaling. The window is shown (it fits itself into the
screen), the model and data are described, then every setup tab and every main tab is shown in turn at the
screen's size minus ``--frame`` pixels of height (title bar and taskbar of a real desktop) and at the full
screen, and these are checked:

- the window's minimum size fits the screen, and the window lies inside it;
- no visible widget lies outside its parent (a layout given less than its minimum puts children outside);
- no visible text widget is shorter than its text needs (rows crushed into overprinted strips);
- no two visible text widgets (labels, buttons, fields) overlap where they are seen.

Prints one JSON object: {"logical": [w, h], "problems": [...], "shots": [...]}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _screen_config(w: int, h: int) -> str:
    cfg = {"screens": [{"name": "test", "x": 0, "y": 0, "width": w, "height": h, "logicalDpi": 96,
                        "logicalBaseDpi": 96, "dpr": 1}]}
    path = Path(tempfile.mkdtemp()) / "screen.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def describe(w) -> str:
    name = w.objectName() or type(w).__name__
    text = getattr(w, "text", None)
    if callable(text):
        try:
            t = str(text())[:30]
            if t:
                name += f" {t!r}"
        except TypeError:
            pass
    parent = w.parentWidget()
    return f"{name} in {parent.objectName() or type(parent).__name__}" if parent is not None else name


def check(window) -> list[str]:
    """The problems visible now (see the module doc)."""
    from PySide6.QtCore import QRect
    from PySide6.QtWidgets import (QAbstractButton, QAbstractScrollArea, QAbstractSpinBox, QComboBox, QLabel,
                                   QLineEdit, QScrollBar, QWidget)

    problems = []
    widgets = [w for w in window.findChildren(QWidget) if w.isVisible() and not w.isWindow()]
    scroll_viewports = {a.viewport() for a in window.findChildren(QAbstractScrollArea)}
    for w in widgets:
        parent = w.parentWidget()
        if parent is None or parent in scroll_viewports or isinstance(parent, QAbstractScrollArea):
            continue  # a scroll area's content is larger than its viewport by design
        if w.width() <= 0 or w.height() <= 0:
            continue
        inside = parent.rect().adjusted(-1, -1, 1, 1)
        if not inside.contains(w.geometry()):
            problems.append(f"outside its parent: {describe(w)} at {w.geometry().getRect()} in "
                            f"{parent.rect().getRect()}")
    texts = [w for w in widgets if isinstance(w, (QLabel, QAbstractButton, QLineEdit, QComboBox, QAbstractSpinBox))
             and not isinstance(w, QScrollBar)]
    seen: list[tuple[object, QRect]] = []
    for w in texts:
        if isinstance(w, QLabel) and w.text().strip():
            need = w.heightForWidth(w.width()) if w.wordWrap() else w.minimumSizeHint().height()
            if w.pixmap() is None or w.pixmap().isNull():
                need = min(need, w.fontMetrics().height() * 40)
                if w.height() < need - 2 and w.height() < w.fontMetrics().height():
                    problems.append(f"crushed: {describe(w)} is {w.height()} px high, needs {need}")
        elif not isinstance(w, QLabel) and w.height() < w.fontMetrics().height():
            problems.append(f"crushed: {describe(w)} is {w.height()} px high")
        region = w.visibleRegion().boundingRect()
        if region.isEmpty():
            continue
        rect = QRect(w.mapTo(window, region.topLeft()), region.size())
        if isinstance(w, QLabel) and not w.text().strip():
            continue
        seen.append((w, rect))
    for i, (a, ra) in enumerate(seen):
        for b, rb in seen[i + 1:]:
            if a.isAncestorOf(b) or b.isAncestorOf(a):
                continue
            both = ra.intersected(rb)
            if both.width() > 2 and both.height() > 2:
                problems.append(f"overlap: {describe(a)} {ra.getRect()} and {describe(b)} {rb.getRect()}")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("screen", help="WxH device pixels")
    p.add_argument("--shots", help="save a screenshot of each state under this folder")
    p.add_argument("--frame", type=int, default=80, help="pixels of height a desktop keeps (title bar, taskbar)")
    p.add_argument("--tag", default="", help="file name prefix of the screenshots")
    p.add_argument("--run-steps", type=int, default=0, help="train the demo this many steps first (plots filled)")
    args = p.parse_args(argv)
    sw, sh = (int(x) for x in args.screen.lower().split("x"))
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={_screen_config(sw, sh)}"
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv[:1])
    from ftstudio.core.config import RunConfig
    from ftstudio.gui.main_window import MainWindow

    settings = QSettings(str(Path(tempfile.mkdtemp()) / "s.ini"), QSettings.Format.IniFormat)
    cfg = RunConfig().replace(output=tempfile.mkdtemp(), device="cpu")
    if args.run_steps:
        cfg = cfg.replace(max_steps=args.run_steps, batch_size=8, seq_len=64, eval_every=max(1, args.run_steps // 4),
                          memory_snapshot_every=1, run_name="screenshot")
    win = MainWindow(config=cfg, settings=settings)
    win.ask_on_close = False
    win.resize(4000, 3000)  # a size from a larger monitor: the window must still open inside this screen
    win.show()
    t0 = time.monotonic()
    while (win.checks_pending() or win.model_info is None) and time.monotonic() - t0 < 120:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
    if args.run_steps and win.start_run():
        while win.runs.running and time.monotonic() - t0 < 600:
            app.processEvents()
            time.sleep(0.02)
        for _ in range(20):
            app.processEvents()
    avail = app.primaryScreen().availableGeometry()
    problems = []
    if not avail.contains(win.frameGeometry()):
        problems.append(f"window {win.frameGeometry().getRect()} not inside the screen {avail.getRect()}")
    mins = win.minimumSizeHint().expandedTo(win.minimumSize())
    if mins.width() > avail.width() or mins.height() > avail.height() - args.frame:
        problems.append(f"minimum size {mins.width()}x{mins.height()} larger than the screen's "
                        f"{avail.width()}x{avail.height() - args.frame}")
    shots = []
    sizes = [("desktop", avail.width(), avail.height() - args.frame), ("full", avail.width(), avail.height())]
    for label, w, h in sizes:
        win.resize(w, h)
        for left in range(win.left.count()):
            for center in range(win.center.count()):
                win.left.setCurrentIndex(left)
                win.center.setCurrentIndex(center)
                for _ in range(5):
                    app.processEvents()
                where = f"[{w}x{h} {win.left.tabText(left).replace('&&', '&')} | {win.center.tabText(center)}]"
                problems += [f"{where} {x}" for x in check(win)]
                if args.shots and label == "desktop" and center == 0 or (args.shots and left == 0 and
                                                                          label == "desktop" and center > 0):
                    name = (f"{args.tag}{win.left.tabText(left).split()[0].lower()}-"
                            f"{win.center.tabText(center).lower()}.png")
                    Path(args.shots).mkdir(parents=True, exist_ok=True)
                    win.grab().save(str(Path(args.shots) / name))
                    shots.append(name)
    # a plan that does not fit: the memory bar grows its advice rows (Apply buttons) under the bar
    win.resize(avail.width(), avail.height() - args.frame)
    win.left.setCurrentIndex(0)
    win.center.setCurrentIndex(0)
    card = win.hardware_panel.target.findText("8 GB card")
    win.hardware_panel.target.setCurrentIndex(card)
    win.training_panel.set_values(batch_size=4096, seq_len=512)
    for _ in range(20):
        app.processEvents()
    if not win.memory_bar.advice_box.isVisible():
        problems.append("advice: a plan of batch 4096 × 512 tokens on an 8 GB card showed no advice rows")
    problems += [f"[advice] {x}" for x in check(win)]
    if args.shots:
        win.grab().save(str(Path(args.shots) / f"{args.tag}advice.png"))
        shots.append(f"{args.tag}advice.png")
    print(json.dumps({"logical": [avail.width(), avail.height()], "dpr": app.primaryScreen().devicePixelRatio(),
                      "problems": problems, "shots": shots}))
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
