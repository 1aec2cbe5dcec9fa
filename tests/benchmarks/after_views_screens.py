"""Screenshots of the Compare tab's Benchmarks and Forgetting-budget views showing a measured result (the records
interpolation.py wrote), rendered offscreen:

    python tests/benchmarks/after_views_screens.py tests/benchmarks/results/interpolation_smollm2_h100.json OUT_DIR

The views read a run folder; this builds one holding only those two records (RUN/benchmarks/, RUN/interpolation/).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(results: str, out: str) -> int:
    from PySide6.QtWidgets import QApplication

    from ftstudio.gui.benchmark_views import BenchmarkView
    from ftstudio.gui.budget_view import ForgettingBudgetView
    from ftstudio.gui.theme import apply_theme

    data = json.loads(Path(results).read_text(encoding="utf-8"))
    run = Path(tempfile.mkdtemp(prefix="after-views-"))
    (run / "benchmarks").mkdir()
    (run / "interpolation").mkdir()
    (run / "benchmarks" / "gpu.json").write_text(json.dumps(data["before_after"]), encoding="utf-8")
    (run / "interpolation" / "sweep-gpu.json").write_text(json.dumps(data["sweep"]), encoding="utf-8")
    app = QApplication.instance() or QApplication([])
    apply_theme("light")  # before the views: their plots take the light colours
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, view, size in (("compare-benchmarks", BenchmarkView(), (1000, 560)),
                             ("compare-forgetting-budget", ForgettingBudgetView(), (1000, 600))):
        view.set_run(str(run))
        view.resize(*size)
        view.show()
        app.processEvents()
        view.grab().save(str(out_dir / f"{name}.png"))
        print(out_dir / f"{name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
