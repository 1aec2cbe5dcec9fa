"""The window for preference runs: the method and its fields in the training form, the preference accuracy in the
monitor, and both sides of a pair in the data preview."""
import json

import pytest

pytest.importorskip("pytestqt")

from ftstudio.core.events import EvalMetrics, StepMetrics  # noqa: E402


def test_monitor_plots_train_and_heldout_preference_accuracy(qtbot):
    from ftstudio.gui.monitor import Monitor
    m = Monitor()
    qtbot.addWidget(m)
    for step, acc in ((1, 0.5), (2, 0.75)):
        m.handle(StepMetrics(step=step, loss=0.6, lr=1e-6, grad_norm=1.0, tokens_per_s=10.0,
                             objective={"rewards/accuracies": acc, "rewards/margins": 0.1 * step}))
    m.handle(EvalMetrics(step=2, loss=0.55, accuracy=0.8, objective={"rewards/margins": 0.3}))
    m._flush()
    assert m.pref_acc.y == [0.5, 0.75] and m.accuracy.y == [0.8]
    assert m.metric_axis.shown and "train acc" in m.loss_plot.getPlotItem().titleLabel.text
    assert "reward margin 0.3" in m.log.toPlainText()


def test_training_form_offers_the_method_and_the_preview_shows_both_answers(qtbot, tiny_llama, tmp_path):
    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import render_example
    from ftstudio.gui.panels.training_panel import TrainingPanel
    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.set_value("method", "dpo")
    panel.set_value("dpo_beta", 0.2)
    cfg = panel.config()
    assert cfg.train.method == "dpo" and cfg.train.dpo_beta == 0.2
    row = {"prompt": [{"role": "user", "content": "cat"}], "chosen": [{"role": "assistant", "content": "dog"}],
           "rejected": [{"role": "assistant", "content": "moon"}]}
    shown = render_example(row, "auto", str(tiny_llama), DataConfig())
    text = "".join(t for t, _ in shown)
    trained = "".join(t for t, on in shown if on)
    assert "── chosen ──" in text and "── rejected ──" in text
    assert "dog" in trained and "moon" in trained and "cat" not in trained
    json.dumps(shown)
