"""The Compare tab's views of what a fine-tune did after the fact (gui/benchmark_views.py, gui/budget_view.py):
benchmark bars base vs fine-tuned from the run's record or scored from the view, and the Forgetting budget (the α
curve, the slider, Export at α), with Stop on their background jobs. Tiny models, local task files."""
import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_benchmarks import write_task
from test_interpolate import forgetful_run  # noqa: F401 (the fixture: a tiny model made to forget)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SCREENS = os.environ.get("FTSTUDIO_SCREENSHOTS")  # a folder: the tests also save the views' screenshots there


def wait_idle(qtbot, view, timeout=120_000):
    qtbot.waitUntil(lambda: not view.job.running, timeout=timeout)


def a_record(run_dir):
    """A record as `ftstudio eval RUN` writes it (two tasks, base and fine-tuned, Δ), saved by the engine."""
    from ftstudio.engine.benchmarks import delta, save_record

    base = {"tiny_mc": {"acc": {"value": 0.25, "stderr": 0.05}, "acc_norm": {"value": 0.375, "stderr": 0.06}},
            "other_mc": {"acc": {"value": 0.5, "stderr": 0.1}}}
    tuned = {"tiny_mc": {"acc": {"value": 0.625, "stderr": 0.04}, "acc_norm": {"value": 0.5, "stderr": 0.07}},
             "other_mc": {"acc": {"value": 0.375, "stderr": 0.09}}}
    record = {"created": "2026-12-06T11:00:00+0000", "run": str(run_dir), "tasks": {},
              "models": {"base": {"scores": base}, "fine_tuned": {"scores": tuned}}, "delta": delta(base, tuned),
              "settings": {"lm_eval_version": "0.4.13", "num_fewshot": None, "apply_chat_template": False,
                           "batch_size": 8, "limit": None, "seed": 1234, "device": "cpu", "dtype": "float32"}}
    return save_record(record)


def test_benchmark_view_shows_the_runs_record_as_bars_with_error_bars(qtbot, forgetful_run):
    from ftstudio.gui.benchmark_views import BenchmarkView

    path = a_record(forgetful_run["run"])
    saved = json.loads(path.read_text())
    view = BenchmarkView()
    qtbot.addWidget(view)
    view.set_run(str(forgetful_run["run"]))
    rows = [(view.table.item(i, 0).text(), view.table.item(i, 1).text()) for i in range(view.table.rowCount())]
    assert rows == [("other_mc", "acc"), ("tiny_mc", "acc"), ("tiny_mc", "acc_norm")]
    for i, (task, metric) in enumerate(rows):
        for label, col in (("base", 2), ("fine_tuned", 3)):
            s = saved["models"][label]["scores"][task][metric]
            assert view.table.item(i, col).text() == f"{s['value']:.4f} ± {s['stderr']:.4f}"
            values, errors = view.bars.shown[label]
            assert values[i] == pytest.approx(s["value"]) and errors[i] == pytest.approx(s["stderr"])
        d = saved["delta"][task][metric]
        assert view.table.item(i, 4).text() == f"{d['value']:+.4f} ± {d['stderr']:.4f}"
    # what pyqtgraph draws is that data: bar heights and the error bars' half-heights
    assert list(view.bars.bars["fine_tuned"].opts["height"]) == pytest.approx([0.375, 0.625, 0.5])
    assert list(view.bars.errors["base"].opts["top"]) == pytest.approx([0.1, 0.05, 0.06])
    assert "lm-eval 0.4.13" in view.settings_line.text() and "chat template off" in view.settings_line.text()
    path.unlink()


def _tiny_mc_view(qtbot, run_dir: Path, tmp_path):
    """A Benchmarks view on the run, set to score the tiny local task."""
    from ftstudio.gui.benchmark_views import BenchmarkView

    view = BenchmarkView()
    qtbot.addWidget(view)
    view.set_run(str(run_dir))
    view.tasks.setText("tiny_mc")
    view.include.setText(str(write_task(tmp_path / "tasks")))
    return view


def test_benchmark_view_scores_both_models_on_a_thread_and_saves_the_record(qtbot, forgetful_run, tmp_path):
    pytest.importorskip("lm_eval")
    from ftstudio.gui.benchmark_views import BenchmarkView

    run_dir = Path(forgetful_run["run"])
    view = _tiny_mc_view(qtbot, run_dir, tmp_path)
    assert view.table.rowCount() == 0 and view.run_button.isEnabled()
    view.limit.setValue(6)
    view.run_button.click()
    assert view.stop_button.isEnabled() and not view.run_button.isEnabled()
    wait_idle(qtbot, view)
    files = sorted((run_dir / "benchmarks").glob("*.json"))
    assert len(files) == 1, view.status.text()
    saved = json.loads(files[0].read_text())
    assert saved["settings"]["limit"] == 6 and saved["tasks"]["tiny_mc"]["documents"] == 6
    for label, col in (("base", 2), ("fine_tuned", 3)):
        s = saved["models"][label]["scores"]["tiny_mc"]["acc"]
        assert view.table.item(0, col).text().startswith(f"{s['value']:.4f}")
    assert "recorded in" in view.status.text() and not view.stop_button.isEnabled()
    view2 = BenchmarkView()   # the run reopened: the record saved by the view is what is shown
    qtbot.addWidget(view2)
    view2.set_run(str(run_dir))
    assert view2.record["models"] == saved["models"]
    assert view2.tasks.text() == "tiny_mc" and view2.limit.value() == 6   # Score both would repeat its settings
    if SCREENS:
        view2.resize(900, 520)
        view2.grab().save(str(Path(SCREENS) / "compare-benchmarks.png"))
    for f in (run_dir / "benchmarks").glob("*.json"):
        f.unlink()


def test_benchmark_view_stop_records_nothing(qtbot, forgetful_run, tmp_path):
    pytest.importorskip("lm_eval")
    run_dir = Path(forgetful_run["run"])
    view = _tiny_mc_view(qtbot, run_dir, tmp_path)
    view.run_button.click()
    view.stop_button.click()
    wait_idle(qtbot, view)
    assert "stopped" in view.status.text() and view.record is None
    assert not list((run_dir / "benchmarks").glob("*.json"))   # nothing recorded for a stopped pass
    assert view.run_button.isEnabled() and not view.stop_button.isEnabled()


@pytest.fixture(scope="module")
def swept(forgetful_run):
    """The run's α sweep on a 5-point grid, saved in the run folder by the engine (what `interpolate --alphas`
    writes)."""
    from ftstudio.engine.alpha_sweep import sweep_alphas

    return sweep_alphas(forgetful_run["run"], [0, 0.25, 0.5, 0.75, 1], device="cpu")


def test_budget_view_draws_the_saved_sweep_and_the_slider_picks_each_point(qtbot, forgetful_run, swept):
    from ftstudio.gui.budget_view import ForgettingBudgetView

    run_dir = Path(forgetful_run["run"])
    (run_dir / "interpolation" / "choice.json").unlink(missing_ok=True)
    saved = json.loads(Path(swept["saved_to"]).read_text())
    view = ForgettingBudgetView()
    qtbot.addWidget(view)
    view.set_run(str(run_dir))
    x, y = view.task_curve.getData()
    assert list(x) == [p["alpha"] for p in saved["points"]] and list(y) == pytest.approx([p["task"] for p in saved["points"]])
    x, y = view.retention_curve.getData()
    assert list(y) == pytest.approx([p["retention"] for p in saved["points"]])
    assert view.alpha == saved["chosen_alpha"] and view.chosen_line.value() == saved["chosen_alpha"]
    for i, point in enumerate(saved["points"]):
        view.slider.setValue(i)
        assert view.alpha == point["alpha"] and view.cursor.value() == point["alpha"]
        text = view.values.text()
        assert f"α = {point['alpha']:g}" in text and f"{point['task']:.4f}" in text and f"{point['retention']:.4f}" in text
        if point.get("retention_recovered") is not None:
            assert f"{point['retention_recovered']:.0%} of the forgetting taken back" in text
    view.pick(0.5)
    choice = json.loads((run_dir / "interpolation" / "choice.json").read_text())
    assert choice["alpha"] == 0.5 and choice["alphas"] == [0, 0.25, 0.5, 0.75, 1]
    assert choice["rule_alpha"] == saved["chosen_alpha"] and choice["sweep_created"] == saved["created"]
    again = ForgettingBudgetView()   # reopened: the slider comes back at the α the user chose, not the rule's
    qtbot.addWidget(again)
    again.set_run(str(run_dir))
    assert again.alpha == 0.5 and "α = 0.5 was chosen" in again.status.text()


def test_budget_view_right_axis_follows_the_plot_when_it_is_resized(qtbot, forgetful_run, swept):
    """The retention curve's own ViewBox keeps the plot's geometry through a resize, so its points sit against the
    right axis' ticks (a twin whose sync was not kept alive drew the curve below the plot, clipped at α ≈ 0.7)."""
    from ftstudio.gui.budget_view import ForgettingBudgetView

    view = ForgettingBudgetView()
    qtbot.addWidget(view)
    view.set_run(str(forgetful_run["run"]))
    import gc
    gc.collect()
    for size in ((700, 450), (1000, 600)):
        view.resize(*size)
        view.show()
        qtbot.wait(50)
        main = view.plot.getPlotItem().vb.sceneBoundingRect()
        assert view.right.geometry() == main


def test_budget_view_export_at_alpha_writes_a_model_that_loads(qtbot, forgetful_run, swept, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftstudio.gui.budget_view import ForgettingBudgetView

    run_dir = Path(forgetful_run["run"])
    view = ForgettingBudgetView()
    qtbot.addWidget(view)
    view.set_run(str(run_dir))
    view.pick(0.25)
    out = tmp_path / "theta-0.25"
    asked = []
    view.choose_folder = lambda parent, alpha: asked.append(alpha) or str(out)
    view.export_button.click()
    wait_idle(qtbot, view)
    assert asked == [0.25], view.status.text()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    base = load_file(f"{forgetful_run['base']}/model.safetensors")
    final = load_file(f"{forgetful_run['final']}/model.safetensors")
    key = next(k for k in final if k.endswith("q_proj.weight"))
    expected = torch.lerp(base[key].float(), final[key].float(), 0.25).to(final[key].dtype)
    assert torch.equal(dict(model.named_parameters())[key].detach(), expected)
    choice = json.loads((run_dir / "interpolation" / "choice.json").read_text())
    assert choice["alpha"] == 0.25 and choice["exported_to"] == str(out) and choice["exported_alpha"] == 0.25
    assert "written to" in view.status.text()
    if SCREENS:
        view.resize(900, 560)
        view.grab().save(str(Path(SCREENS) / "compare-forgetting-budget.png"))


def test_budget_view_sweeps_on_a_thread_and_stop_keeps_the_points_scored(qtbot, forgetful_run, monkeypatch):
    from ftstudio.engine import alpha_sweep
    from ftstudio.gui.budget_view import ForgettingBudgetView

    slow = alpha_sweep.AlphaModel.set_alpha
    monkeypatch.setattr(alpha_sweep.AlphaModel, "set_alpha", lambda self, a: (time.sleep(0.3), slow(self, a)))
    run_dir = Path(forgetful_run["run"])
    view = ForgettingBudgetView()
    qtbot.addWidget(view)
    view.set_run(str(run_dir))
    view.alphas.setText("0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1")
    view.sweep_button.click()
    assert not view.sweep_button.isEnabled() and view.stop_button.isEnabled() and not view.slider.isEnabled()
    qtbot.waitUntil(lambda: "scored" in view.status.text(), timeout=60_000)
    view.stop_button.click()
    wait_idle(qtbot, view)
    n = len(view.points)
    assert 1 <= n < 11 and "stopped early" in view.status.text(), view.status.text()
    newest = alpha_sweep.latest_sweep(run_dir)
    assert [p["alpha"] for p in newest["points"]] == [p["alpha"] for p in view.points]
    assert view.sweep_button.isEnabled() and view.slider.isEnabled()


def test_bad_alpha_grid_is_one_line_and_starts_nothing(qtbot, forgetful_run):
    from ftstudio.gui.budget_view import ForgettingBudgetView

    view = ForgettingBudgetView()
    qtbot.addWidget(view)
    view.set_run(str(forgetful_run["run"]))
    view.alphas.setText("0, 0.5, x")
    view.sweep_button.click()
    assert not view.job.running and "'x' is not a number" in view.status.text()


def test_compare_tab_carries_both_views_and_hides_benchmarks_for_a_classifier(qtbot, forgetful_run):
    from ftstudio.core.config import RunConfig
    from ftstudio.gui.compare_tab import CompareTab

    tab = CompareTab()
    qtbot.addWidget(tab)
    cfg = RunConfig.load_run(Path(forgetful_run["run"]) / "config.yaml")
    tab.set_run(str(forgetful_run["run"]), cfg, forgetful_run["final"], "causal-lm")
    assert tab.budget_view.run_dir == str(forgetful_run["run"]) and tab.after.isTabVisible(0)
    tab.set_run(str(forgetful_run["run"]), cfg, forgetful_run["final"], "classification")
    assert not tab.after.isTabVisible(0) and tab.after.isTabVisible(1)
    tab.shutdown()


def test_a_sweep_with_benchmarks_scores_each_alpha_on_the_benchmark_views_tasks(qtbot, forgetful_run, tmp_path):
    pytest.importorskip("lm_eval")
    from ftstudio.core.config import RunConfig
    from ftstudio.gui.compare_tab import CompareTab

    tab = CompareTab()
    qtbot.addWidget(tab)
    cfg = RunConfig.load_run(Path(forgetful_run["run"]) / "config.yaml")
    tab.set_run(str(forgetful_run["run"]), cfg, forgetful_run["final"], "causal-lm")
    tab.bench_view.tasks.setText("tiny_mc")
    tab.bench_view.include.setText(str(write_task(tmp_path / "tasks")))
    view = tab.budget_view
    view.alphas.setText("0,1")
    view.with_bench.setChecked(True)
    view.sweep_button.click()
    wait_idle(qtbot, view)
    assert [p["alpha"] for p in view.points] == [0, 1], view.status.text()
    assert all("tiny_mc/acc" in p["benchmarks"] for p in view.points)
    view.pick(1)
    assert f"tiny_mc/acc {view.points[1]['benchmarks']['tiny_mc/acc']:.4f}" in view.values.text()
    tab.shutdown()


def test_two_sweeps_within_a_second_keep_both_records(forgetful_run, swept):
    from ftstudio.engine.alpha_sweep import save_sweep

    record = {k: v for k, v in swept.items() if k not in ("saved_to", "plot")}
    first, second = save_sweep(dict(record)), save_sweep(dict(record, note="second"))
    assert first != second and first.exists() and json.loads(second.read_text())["note"] == "second"
    first.unlink()
    second.unlink()
    for png in Path(forgetful_run["run"], "interpolation").glob("sweep-*.png"):
        if not png.with_suffix(".json").exists():
            png.unlink()
