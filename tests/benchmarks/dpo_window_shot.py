"""A picture of the real main window set up for DPO (README's preference section), drawn offscreen:

    python tests/benchmarks/dpo_window_shot.py --config dpo.yaml --out resources/screenshots/dpo-setup-1280x800.png

The window opens on ``--config`` (a run config with ``method: dpo``), waits for the model's facts, the data check and
the memory plan (as ``ftstudio gui --ready`` does), opens the Training tab with the objective's fields in view, plans
for ``--card`` and saves ``widget.grab()``. Qt's offscreen screen is 800 × 800 unless told otherwise, so the script
gives it a screen of the picture's size (the offscreen platform's ``configfile``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="1280x800")
    p.add_argument("--card", default="80 GB card", help="the hardware panel's card to plan for")
    args = p.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    screen = Path(tempfile.mkdtemp()) / "screen.json"
    screen.write_text(json.dumps({"screens": [{"name": "shot", "x": 0, "y": 0, "width": w, "height": h,
                                               "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}))
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={screen}"

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from ftstudio.core.config import RunConfig
    from ftstudio.gui.main_window import MainWindow

    app = QApplication(sys.argv[:1])
    app.setOrganizationName("FTStudio-shot")      # settings of its own: the user's last config stays untouched
    win = MainWindow(config=RunConfig.load(args.config), restore_last=False)
    win.left.setCurrentIndex(1)                    # Training
    idx = win.hardware_panel.target.findText(args.card)
    if idx < 0:
        print(f"no card {args.card!r} in the hardware panel's list", file=sys.stderr)
        return 2
    win.hardware_panel.target.setCurrentIndex(idx)
    win.resize(w, h)
    win.show()
    t0 = time.perf_counter()

    def shoot() -> None:
        if win.checks_pending() and time.perf_counter() - t0 < 120:
            QTimer.singleShot(100, shoot)
            return
        panel = win.training_panel
        panel.reveal("method")
        for _ in range(3):                         # the expanded group's layout settles, then scroll to the fields
            app.processEvents()
        panel.scroll.ensureWidgetVisible(panel.editors["dpo_reference"].widget, 0, 120)
        app.processEvents()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        win.grab().save(args.out)
        print(f"screenshot: {args.out} ({win.width()}x{win.height()})")
        win.ask_on_close = False
        win.close()
    QTimer.singleShot(0, shoot)
    app.exec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
