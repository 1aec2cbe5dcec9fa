"""The monitor's per-class table: a classifier's precision/recall/F1/support beside the majority-class baseline,
and the collapse warning only on a collapse; live from EvalMetrics and from a finished run's metrics.jsonl."""
from __future__ import annotations

import os

import pytest

from ftstudio.core.events import EvalMetrics, RunFinished
from ftstudio.core.runs import read_metrics
from ftstudio.engine.sinks import MetricsWriter
from ftstudio.engine.train.figures import class_figures

TARGETS = [0] * 6 + [1] * 3 + [2]          # ham ×6, spam ×3, promo ×1
NAMES = ["ham", "spam", "promo"]


def _eval(step, preds, targets=TARGETS):
    f = class_figures(preds, targets, NAMES)
    acc = sum(p == t for p, t in zip(preds, targets)) / len(targets)
    return EvalMetrics(step=step, loss=0.7, accuracy=acc, majority_baseline=f["majority_baseline"],
                       majority_class=f["majority_class"], per_class=f["per_class"], collapsed=f["collapsed"])


def _rows(view):
    return [[view.cell(r, c) for c in range(view.table.columnCount())] for r in range(view.table.rowCount())]


@pytest.fixture
def monitor(shown_monitor):
    return shown_monitor((1100, 700))


def test_live_eval_fills_the_table_and_warns_only_on_a_collapse(monitor):
    view = monitor.class_figures
    monitor.handle(EvalMetrics(step=2, loss=2.3, perplexity=9.9))       # a language model: nothing to show
    assert not view.isVisible() and view.table.rowCount() == 0

    # ham 5/6 right (one said spam), spam 2/3 (one said ham), promo said ham
    monitor.handle(_eval(4, [0, 0, 0, 0, 0, 1] + [1, 1, 0] + [0]))
    assert view.isVisible() and not view.warning.isVisible()
    assert _rows(view) == [["ham", "71.4%", "83.3%", "76.9%", "6", "7"],
                           ["spam", "66.7%", "66.7%", "66.7%", "3", "3"],
                           ["promo", "–", "0.0%", "0.0%", "1", "0"]]
    head = view.headline.text()
    assert "Accuracy at step 4: 70.0%" in head and "baseline 60.0%" in head and "'ham'" in head
    assert "10.0 points above it" in head

    monitor.handle(_eval(8, [0] * 10))                                  # every row said ham: collapsed
    assert view.warning.isVisible() and "collapsed onto one class" in view.warning.text()
    assert "#d62728" in view.warning.styleSheet()
    assert _rows(view)[0] == ["ham", "60.0%", "100.0%", "75.0%", "6", "10"]
    assert "Accuracy at step 8: 60.0%" in view.headline.text() and "no better than it" in view.headline.text()

    monitor.handle(_eval(12, [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]))          # learned again: the warning goes
    assert not view.warning.isVisible() and _rows(view)[2][1:4] == ["100.0%", "100.0%", "100.0%"]

    monitor.reset()                                                     # a new run starts empty
    assert not view.isVisible() and view.table.rowCount() == 0


def test_a_finished_run_opened_from_its_folder_shows_its_last_figures(monitor, tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    first, last = _eval(5, [0] * 10), _eval(10, [0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    writer(first)
    writer(last)
    final = {k: v for k, v in last.to_dict().items() if k not in ("event", "step", "best", "objective")}
    writer(RunFinished(status="finished", steps=10, train_loss=0.4, eval=final))
    writer.close()

    monitor.show_history(read_metrics(tmp_path))
    view = monitor.class_figures
    assert view.isVisible() and not view.warning.isVisible()           # the collapse at step 5 is history
    assert _rows(view) == [["ham", "100.0%", "83.3%", "90.9%", "6", "5"],
                           ["spam", "75.0%", "100.0%", "85.7%", "3", "4"],
                           ["promo", "100.0%", "100.0%", "100.0%", "1", "1"]]
    assert "Accuracy at step 10: 90.0%" in view.headline.text()


def test_an_older_run_without_f1_gets_it_from_precision_and_recall():
    from ftstudio.gui.class_figures_view import class_f1
    assert class_f1({"precision": 0.5, "recall": 1.0}) == pytest.approx(2 / 3)
    assert class_f1({"precision": None, "recall": 0.0}) == 0.0
    assert class_f1({"precision": None, "recall": None}) is None


@pytest.mark.skipif(not os.environ.get("FTSTUDIO_SHOTS"), reason="screenshots: FTSTUDIO_SHOTS=DIR")
def test_screenshot(monitor, qtbot):
    monitor.resize(1280, 800)
    monitor.handle(_eval(4, [0, 0, 0, 0, 0, 1] + [1, 1, 0] + [0]))
    qtbot.wait(50)  # the splitter lays the shown view out
    assert monitor.class_figures.height() >= 240
    monitor.grab().save(os.path.join(os.environ["FTSTUDIO_SHOTS"], "class-figures-1280x800.png"))
    monitor.handle(_eval(8, [0] * 10))
    qtbot.wait(50)
    monitor.grab().save(os.path.join(os.environ["FTSTUDIO_SHOTS"], "class-figures-collapse-1280x800.png"))
