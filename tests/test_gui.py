"""The desktop app driven through pytest-qt, offscreen: the window, the generated training form, the plan on
the memory bar, data problems in the panel, a real tiny run to the end, Stop within one step, and nothing
(thread or timer) left running afterwards.
"""
from __future__ import annotations

import gc
import json
import time

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QSettings, QThread, QTimer  # noqa: E402
from PySide6.QtWidgets import QMessageBox, QWidget  # noqa: E402

from ftstudio.core import config as C  # noqa: E402
from ftstudio.core.events import RunFinished, StepMetrics  # noqa: E402

OBJECT_NAMES = ("modelPanel", "datasetPanel", "hardwarePanel", "trainingPanel", "memoryBar", "lossPlot", "lrPlot",
                "startButton", "pauseButton", "stopButton")
WORDS = "the contract shall terminate on notice and the party shall pay the damages of one two three".split()


def write_lm_data(path, n=40):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": " ".join(WORDS[i % 5:i % 5 + 4]),
                                 "completion": " ".join(WORDS[(i + 3) % 8:(i + 3) % 8 + 3])}) + "\n")
    return path


def write_broken_data(path):
    path.write_text('{"text": "the contract shall terminate"}\n{"text": broken json\n{"text": 5}\n', encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_dangling_threads(qapp):
    """Like napari's _dangling_qthreads: a QThread still running after a test would abort the whole run."""
    yield
    qapp.processEvents()
    running = [o for o in gc.get_objects() if issubclass(type(o), QThread) and o.isRunning()]
    assert not running, f"threads outlived the test: {running}"


@pytest.fixture
def make_window(qtbot, tmp_path):
    from ftstudio.gui.main_window import MainWindow

    made = []

    def make(**leaves):
        leaves.setdefault("output", str(tmp_path / "runs"))
        cfg = C.RunConfig().replace(**leaves)
        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        win = MainWindow(config=cfg, settings=settings)
        win.ask_on_close = False
        win.resize(1280, 800)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        win.close()  # mid-run: returns at once; the window closes itself once the step and checkpoint are done
        qtbot.waitUntil(lambda: not win.runs.running and not win.isVisible(), timeout=120_000)
        timers = [t for t in win.findChildren(QTimer) if t.isActive()]
        assert not timers, f"timers still running after close: {[t.parent() for t in timers]}"
        assert win.pool.activeThreadCount() == 0
        win.deleteLater()


def wait_ready(qtbot, win, timeout=60_000):
    qtbot.waitUntil(lambda: not win.checks_pending(), timeout=timeout)


def lm_window(make_window, tiny_llama, tmp_path, **leaves):
    base = dict(source=str(tiny_llama), dataset=str(write_lm_data(tmp_path / "lm.jsonl")), device="cpu",
                precision="fp32", batch_size=4, seq_len=32, lr=5e-3, eval_every=3, val_fraction=0.2,
                memory_snapshot_every=2, run_name="gui-run", max_steps=6)
    base.update(leaves)
    return make_window(**base)


def test_window_has_the_named_parts_and_the_demo(make_window, qtbot):
    win = make_window()
    for name in OBJECT_NAMES:
        assert win.findChild(QWidget, name) is not None, name
    wait_ready(qtbot, win)
    assert win.model_info is not None and win.model_info.source == "demo"
    assert win.model_panel.fields["params"].text().startswith("22,")
    assert win.memory_bar.plan is not None  # the demo's plan is drawn before any run
    assert not win.stop_button.isEnabled() and win.start_button.isEnabled()


def test_training_form_has_every_field_with_its_doc_and_choices(make_window):
    from ftstudio.core import presets

    panel = make_window().training_panel
    assert set(panel.editors) == set(C.LEAF_TO_SECTION)
    for leaf, ed in panel.editors.items():
        assert C.leaf_doc(leaf) in ed.tooltip
    assert [panel.editors["schedule"].widget.itemText(i) for i in range(len(C.SCHEDULES))] == list(C.SCHEDULES)
    assert panel.editors["precision"].widget.count() == len(C.PRECISIONS)
    combo = panel.preset
    assert [combo.itemText(i) for i in range(1, combo.count())] == presets.preset_names()  # one source
    panel.editors["lr"].widget.setText("7e-5")
    assert combo.currentIndex() == 0  # no preset sets lr 7e-5
    panel.apply_preset("Safe defaults (the seed)")
    cfg = panel.config()
    assert (cfg.optim.lr, cfg.schedule.schedule, cfg.schedule.warmup_ratio, cfg.train.epochs) == \
        (2e-5, "cosine", 0.05, 2.0)
    assert combo.currentText() == presets.matching_preset(cfg) == "Safe defaults (the seed)"
    combo.activated.emit(presets.preset_names().index("Fastest") + 1)  # what choosing it in the list does
    assert panel.config() == presets.apply_preset(cfg, "Fastest") and combo.currentText() == "Fastest"
    panel.editors["compile"].widget.setChecked(True)  # an edit that leaves the preset un-matches it (Fastest
    # leaves compile to the repay rule)
    assert combo.currentIndex() == 0


def test_lr_plot_redraws_while_editing_and_bad_values_name_the_field(make_window):
    panel = make_window().training_panel
    before = max(panel.lr_curve.getData()[1])
    panel.editors["lr"].widget.setText("1e-4")
    assert max(panel.lr_curve.getData()[1]) == pytest.approx(1e-4) != before
    panel.editors["schedule"].widget.setCurrentText("constant")
    ys = panel.lr_curve.getData()[1]
    assert ys[-1] == pytest.approx(1e-4)  # constant holds the peak to the end
    panel.editors["warmup_ratio"].widget.setText("2")
    assert panel.error and panel.error.startswith("Warm-up share")  # the field by its label in the form
    assert panel.config().schedule.warmup_ratio == 0.05  # the last valid config is kept


def test_choosing_a_tiny_model_and_dataset_updates_the_plan(make_window, qtbot, tiny_llama, tmp_path):
    win = make_window()
    wait_ready(qtbot, win)
    demo_plan = win.memory_bar.plan
    with qtbot.waitSignal(win.planUpdated, timeout=30_000):
        win.model_panel.choose(str(tiny_llama))
    assert win.model_info.model_type == "llama"
    assert win.memory_bar.plan.params == win.model_info.params < demo_plan.params
    assert win.config().model.source == str(tiny_llama)
    data = write_lm_data(tmp_path / "lm.jsonl")
    with qtbot.waitSignal(win.data_panel.reportReady, timeout=60_000) as blocker:
        win.data_panel.datasetRequested.emit(str(data))
    report = blocker.args[0]
    assert report.format == "prompt-completion" and report.rows == 40
    assert win.data_panel.fields["rows"].text().startswith("40 ")
    assert "causal-lm" in win.model_panel.fields["task"].text()
    plan_before = win.memory_bar.plan.activations
    with qtbot.waitSignal(win.planUpdated, timeout=5_000):
        win.training_panel.editors["batch_size"].widget.setValue(64)
    assert win.memory_bar.plan.activations > plan_before  # the bar follows the form


def test_broken_dataset_lists_its_problems_and_blocks_start(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path, dataset=str(write_broken_data(tmp_path / "bad.jsonl")))
    wait_ready(qtbot, win)
    tree = win.data_panel.problems
    assert tree.topLevelItemCount() >= 2
    rows = {tree.topLevelItem(i).text(1) for i in range(tree.topLevelItemCount())}
    assert {"2", "3"} <= rows
    assert all(tree.topLevelItem(i).text(0) == "bad.jsonl" for i in range(tree.topLevelItemCount()))
    assert win.data_panel.error
    assert win.start_run() is False and not win.runs.running
    assert "data" in win.status_text


def test_start_trains_to_the_end_and_feeds_plots_and_bar(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path)
    wait_ready(qtbot, win)
    with qtbot.waitSignal(win.runFinished, timeout=180_000) as blocker:
        qtbot.mouseClick(win.start_button, __import__("PySide6.QtCore").QtCore.Qt.MouseButton.LeftButton)
        assert win.runs.running and win.stop_button.isEnabled()
    result = blocker.args[0]
    assert isinstance(result, RunFinished) and result.status == "finished", result
    m = win.monitor
    assert m.train.x == [1, 2, 3, 4, 5, 6]
    assert m.train.curve.getData()[0] is not None and len(m.train.curve.getData()[0]) == 6  # drawn, not only kept
    assert len(m.lr.y) == 6 and len(m.grad.y) == 6 and len(m.tps.y) == 6
    assert m.eval.x and m.mem.x
    assert win.memory_bar.measured is not None and win.memory_bar.measured.weights > 0
    assert m.progress.value() == m.progress.maximum() == 6
    assert win.heartbeat.stats()["beats"] > 0
    assert win.start_button.isEnabled() and not win.stop_button.isEnabled()
    with qtbot.waitSignal(win.runs_tab.refreshed, timeout=10_000):
        win.runs_tab.refresh()
    assert [s.name for s in win.runs_tab.summaries] == ["gui-run"]
    win.pool.waitForDone()  # the window's own refresh after the run may still be queued
    qtbot.wait(50)
    with qtbot.waitSignal(win.runs_tab.curvesLoaded, timeout=10_000,
                          check_params_cb=lambda n: n == 1):
        win.runs_tab.table.setCurrentItem(win.runs_tab.table.topLevelItem(0))
    assert [x for x, _ in win.runs_tab.curves[win.runs_tab.selected_dirs()[0]]["train"]] == [1, 2, 3, 4, 5, 6]
    m.reset()
    win.runs_tab.buttons["Open"].click()  # a past run's curves back in the monitor, its config in the form
    assert m.train.x == [1, 2, 3, 4, 5, 6] and win.config().data.seq_len == 32


def test_stop_ends_the_run_within_one_step_and_pause_holds(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=100_000, eval_every=0, memory_snapshot_every=1000)
    wait_ready(qtbot, win)
    assert win.start_run()
    qtbot.waitUntil(lambda: win.monitor.counts["step"] >= 2, timeout=120_000)
    import threading

    control = win.runs.control
    blocked = threading.Event()  # set when the trainer reaches the pause point with the pause on
    real_wait = control.wait_while_paused

    def wait_while_paused(*a, **k):
        if control.paused:
            blocked.set()
        return real_wait(*a, **k)

    control.wait_while_paused = wait_while_paused
    win.toggle_pause()

    def steps_seen() -> int:
        return len([e for e in list(win.runs.events) if isinstance(e, StepMetrics)]) + win.monitor.counts["step"]

    before = steps_seen()
    qtbot.waitUntil(blocked.is_set, timeout=30_000)  # the step in flight has finished (slow on a loaded box)
    held = steps_seen()
    assert held <= before + 1  # at most the step that was running when Pause was pressed
    qtbot.wait(700)
    assert steps_seen() == held
    win.toggle_pause()
    qtbot.waitUntil(lambda: win.monitor.counts["step"] > held, timeout=30_000)
    with qtbot.waitSignal(win.runFinished, timeout=60_000) as blocker:
        win.stop_run()  # request first, then read: the trainer cannot have taken more than one step since
        seen = max([e.step for e in list(win.runs.events) if isinstance(e, StepMetrics)] + [win.monitor.step])
    result = blocker.args[0]
    assert result.status == "stopped"
    assert result.steps <= seen + 1


def test_closing_during_a_run_asks_then_stops_and_waits(make_window, qtbot, tiny_llama, tmp_path, monkeypatch):
    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=100_000, eval_every=0)
    wait_ready(qtbot, win)
    win.ask_on_close = True
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No)
    assert win.start_run()
    qtbot.waitUntil(lambda: win.monitor.counts["step"] >= 1, timeout=120_000)
    win.close()
    assert asked and win.isVisible() and win.runs.running  # "No" keeps the run
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    win.close()  # returns at once (tests/test_gui_fit.py measures it); the window closes when the run has ended
    assert win.finishing and "saving" in win.status_text
    qtbot.waitUntil(lambda: not win.runs.running and not win.isVisible(), timeout=120_000)
    assert win.last_result is not None and win.last_result.status == "stopped"


def test_trust_remote_code_asks_first(make_window, monkeypatch):
    win = make_window()
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: QMessageBox.StandardButton.No)
    win.model_panel.trust.setChecked(True)
    assert not win.model_panel.trust.isChecked() and win.config().model.trust_remote_code is False
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: QMessageBox.StandardButton.Yes)
    win.model_panel.trust.setChecked(True)
    assert win.config().model.trust_remote_code is True


def test_cli_command_and_yaml_round_trip(make_window, tmp_path):
    win = make_window()
    win.training_panel.apply_preset("Safe defaults (the seed)")
    cmd = win.cli_command()
    assert cmd.startswith("ftstudio train ") and "--lr 2e-05" in cmd
    assert "--epochs" not in cmd or "--epochs 2.0" in cmd  # only fields that differ from the defaults
    import argparse
    import shlex

    from ftstudio.cli.flags import add_config_flags, apply_config_flags
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(shlex.split(cmd)[2:])
    assert apply_config_flags(C.RunConfig(), args) == win.config()  # the command reproduces the session
    path = tmp_path / "run.yaml"
    win.config().save(path)
    win.training_panel.editors["lr"].widget.setText("3e-5")
    assert win.load_config(str(path)) and win.config().optim.lr == 2e-5


def test_memory_bar_turns_red_with_advice_when_the_plan_does_not_fit(qtbot):
    from ftstudio.engine import memory
    from ftstudio.gui.memory_bar import MemoryBar

    llama7b = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
               "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096}
    cfg = C.RunConfig().replace(device="cuda", precision="bf16-mixed", batch_size=1, seq_len=2048)
    bar = MemoryBar()
    qtbot.addWidget(bar)
    bar.set_capacity(24e9, "a 24 GB card")
    bar.set_plan(memory.estimate(llama7b, cfg), memory.solve(llama7b, cfg, int(24e9)))
    assert not bar.fits
    assert "Does not fit" in bar.summary.text() and "#d62728" in bar.summary.text()
    assert bar.textbook == pytest.approx(16 * bar.plan.params + 2048 * 4096 * 32 * 12, rel=1e-6)
    assert bar.canvas.scale() >= 150e9 > 141e9  # every card marker, 141 GB included, is in view
    bar.set_plan(memory.estimate(llama7b, cfg.replace(batch_size=64)), None)
    assert bar.canvas.scale() > bar.plan.total  # a plan beyond 150 GB widens the bar
    bar.grab()  # paints without error


def test_hardware_panel_polls_about_once_a_second(make_window, qtbot):
    win = make_window()
    panel = win.hardware_panel
    qtbot.waitUntil(lambda: panel.polls >= 2, timeout=10_000)
    first = panel.table.topLevelItem(0)
    assert first is not None
    if not panel.gpus:
        assert first.text(1).startswith("CPU") and "/" in first.text(2)
        assert panel.target.currentData() == "ram"  # no GPU: this machine's RAM first; any card size below it
    else:
        assert panel.selected() == [panel.gpus[0].index] and "FSDP2" in panel.note.text()


def test_ticking_two_gpus_makes_one_fsdp_run_planned_per_gpu(make_window, qtbot, monkeypatch, tmp_path):
    from PySide6.QtCore import Qt

    from ftstudio.core.events import MemorySnapshot
    from ftstudio.engine import hardware, memory

    fake = [hardware.GpuInfo(index=i, name="NVIDIA H200", total_bytes=int(141e9), used_bytes=int(1e9),
                             free_bytes=int(140e9), utilization=0, temperature=30) for i in range(2)]
    monkeypatch.setattr(hardware, "list_gpus", lambda: list(fake))
    win = make_window(device="auto", precision="bf16-mixed")
    wait_ready(qtbot, win)
    panel = win.hardware_panel
    qtbot.waitUntil(lambda: panel.table.topLevelItemCount() == 2, timeout=10_000)
    assert panel.selected() == [0]  # "auto" is the first GPU
    assert "later" not in panel.note.text()
    one_gpu = win.memory_bar.plan
    with qtbot.waitSignal(win.planUpdated, timeout=5_000):
        panel.table.topLevelItem(1).setCheckState(0, Qt.CheckState.Checked)  # what a click does
    cfg = win.config()
    assert cfg.hardware.gpus == [0, 1] and cfg.hardware.device == "cuda"
    assert win.training_panel.editors["gpus"].widget.text() == "0, 1"
    plan = win.memory_bar.plan
    assert plan.to_dict() == memory.estimate(win.model_info.config, cfg, gpus=2).to_dict()  # per GPU, sharded
    assert plan.weights < one_gpu.weights and plan.optimizer < one_gpu.optimizer
    assert "FSDP2" in panel.note.text() and win.memory_bar.capacity == 141e9
    panel.table.topLevelItem(0).setCheckState(0, Qt.CheckState.Unchecked)
    assert (win.config().hardware.device, win.config().hardware.gpus) == ("cuda:1", [])
    panel.table.topLevelItem(1).setCheckState(0, Qt.CheckState.Unchecked)
    assert (win.config().hardware.device, win.config().hardware.gpus) == ("cpu", [])
    win.training_panel.set_values(device="cuda", gpus=[0, 1])  # a loaded config shows as ticks
    assert panel.selected() == [0, 1]
    for dev in ("cuda:0", "cuda:1"):  # during a run: one measured row (and one memory curve pair) per card
        snap = MemorySnapshot(step=2, device=dev, weights=int(2e9), gradients=int(2e9), optimizer=int(8e9),
                              activations=int(1e9), allocated_peak=int(14e9), nvml_used=int(15e9))
        win.monitor.handle(snap)
    assert [name for name, _ in win.memory_bar.canvas.rows()] == ["plan", "cuda:0", "cuda:1"]
    assert set(win.monitor.mem_by_device) == {"cuda:0", "cuda:1"}
    win.memory_bar.grab()


def test_export_launch_script_saves_config_and_script(make_window, tmp_path):
    win = make_window(lr=3e-5)
    script = win.export_launch_script(str(tmp_path / "cluster.yaml"), 2, 4, True)
    text = script.read_text()
    assert script.name == "cluster.sbatch" and "#SBATCH --nodes=2" in text and "--nproc-per-node=4" in text
    assert str(tmp_path / "cluster.yaml") in text
    assert C.RunConfig.load(tmp_path / "cluster.yaml") == win.config()
    plain = win.export_launch_script(str(tmp_path / "one.yaml"), 1, 2, False)
    assert plain.name == "one-launch.sh" and "--standalone --nproc-per-node=2" in plain.read_text()


def test_compare_tab_generates_with_base_and_fine_tuned(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=3, eval_every=0)
    wait_ready(qtbot, win)
    with qtbot.waitSignal(win.runFinished, timeout=180_000) as blocker:
        win.start_run()
    assert blocker.args[0].status == "finished"
    tab = win.compare_tab
    assert tab.tuned and tab.gen_button.isEnabled() and not tab.cls_box.isVisibleTo(win)
    tab.prompt.setPlainText("the contract shall")
    tab.max_new.setValue(4)
    with qtbot.waitSignal(tab.compared, timeout=60_000) as done:
        tab.generate()
    out = done.args[0]
    assert {"base", "tuned"} <= set(out) and tab.tuned_out.toPlainText() == out["tuned"]


def test_window_appears_fast_without_importing_torch(tmp_path):
    import os
    import subprocess
    import sys

    shot = tmp_path / "x.png"
    code = ("import sys, time; t=time.perf_counter(); from ftstudio.gui.app import main; "
            f"rc=main(['--screenshot', {str(shot)!r}, '--fresh']); "
            "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules); sys.exit(rc)")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path))  # fresh QSettings
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert "TORCH False False" in out.stdout
    assert shot.exists() and shot.stat().st_size > 10_000
    # goal: 3 s on an idle machine (measured 2.8 s); the bound leaves room for a shared CI box, and still
    # fails the moment torch (5-10 s to import) sneaks into start-up.
    assert elapsed < 10.0, f"whole process took {elapsed:.1f} s"


def test_compare_tab_confusion_matrix_before_and_after(make_window, qtbot, tiny_bert, tmp_path):
    data = tmp_path / "cls.jsonl"
    rows = [("the party shall terminate the agreement on notice", "termination"),
            ("confidential information shall not be shared", "confidentiality")]
    data.write_text("".join(json.dumps({"text": f"{t} {i}", "label": lab}) + "\n"
                            for i in range(30) for t, lab in [rows[i % 2]]), encoding="utf-8")
    win = make_window(source=str(tiny_bert), dataset=str(data), device="cpu", precision="fp32", batch_size=4,
                      seq_len=32, max_steps=3, eval_every=0, val_fraction=0.2, run_name="cls")
    wait_ready(qtbot, win)
    with qtbot.waitSignal(win.runFinished, timeout=180_000) as blocker:
        win.start_run()
    assert blocker.args[0].status == "finished", blocker.args[0]
    tab = win.compare_tab
    assert tab.eval_button.isEnabled() and not tab.lm_box.isVisibleTo(win)
    progress = []
    tab.evalProgress.connect(lambda which, n, total: progress.append((which, n, total)))
    with qtbot.waitSignal(tab.compared, timeout=60_000) as done:
        tab.evaluate()
    out = done.args[0]
    assert progress and progress[-1] == ("tuned", 6, 6) and ("base", 6, 6) in progress  # shown as it goes
    assert sorted(out["labels"]) == ["confidentiality", "termination"]
    for name in ("base", "tuned"):
        matrix = out[name]["matrix"]
        assert sum(map(sum, matrix)) == 6  # every validation row counted once
        assert 0.0 <= out[name]["accuracy"] <= 1.0
        assert tab.heatmaps[name].matrix == matrix and "accuracy" in tab.acc_labels[name].text()


def test_out_of_memory_ends_the_run_cleanly_and_the_gui_can_start_again(make_window, qtbot, tiny_llama, tmp_path,
                                                                         monkeypatch):
    import torch

    from ftstudio.engine.train import trainer

    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=2, eval_every=0)
    wait_ready(qtbot, win)
    real_run = trainer.Trainer._run

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trainer.Trainer, "_run", oom)
    with qtbot.waitSignal(win.runFinished, timeout=60_000) as blocker:
        win.start_run()
    assert blocker.args[0].kind == "failed"
    assert "memory" in win.status_text.lower() and win.start_button.isEnabled() and not win.runs.running
    monkeypatch.setattr(trainer.Trainer, "_run", real_run)
    with qtbot.waitSignal(win.runFinished, timeout=120_000) as blocker:
        assert win.start_run()
    assert blocker.args[0].status == "finished"


def test_layer_lr_bars_follow_the_optimizer_rule(tiny_llama):
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.models import describe_model
    from ftstudio.engine.train.optim import layer_lr_scales
    from ftstudio.gui.forgetting_views import layer_lr_bars

    info = describe_model(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    expected = layer_lr_scales(model, 2.6)
    got = layer_lr_bars(info.num_layers, 2.6)
    assert list(got) == list(expected)  # same groups, bottom → top
    assert got == pytest.approx(expected)


def test_training_panel_draws_per_layer_rates_and_redraws_on_edit(make_window):
    panel = make_window().training_panel
    panel.set_model_layers(4)
    assert not panel.layer_bars.isVisibleTo(panel) and "ξ = 1" in panel.layer_note.text()
    panel.editors["layer_lr_decay"].widget.setText("2")
    panel.editors["lr"].widget.setText("1e-4")
    rates = panel.layer_bars.rates
    assert panel.layer_bars.isVisibleTo(panel)
    assert list(rates) == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3", "head"]
    assert rates["head"] == pytest.approx(1e-4) and rates["layer.3"] == pytest.approx(5e-5)
    assert rates["embeddings"] == pytest.approx(1e-4 / 2 ** 5)
    assert list(panel.layer_bars.bars.opts["width"]) == pytest.approx(list(rates.values()))
    panel.editors["layer_lr_decay"].widget.setText("3")
    assert panel.layer_bars.rates["layer.3"] == pytest.approx(1e-4 / 3)


def test_forgetting_views_in_the_monitor(make_window):
    import numpy as np

    from ftstudio.core.events import DriftMetrics, RetentionMetrics

    win = make_window()
    m = win.monitor
    names = ["embeddings", "layer.0", "layer.1", "head"]
    for step in (0, 5, 10, 20):  # irregular: drift_every 5 and an evaluation at 20
        m.handle(DriftMetrics(step=step, layers={n: step * (i + 1) * 1e-4 for i, n in enumerate(names)},
                              total=step * 1e-4))
        m.handle(RetentionMetrics(step=step, loss=3.0 + step * 0.01, perplexity=20.0))
    m._flush()
    values, image = m.drift.last_matrix, m.drift.image.image
    assert values.shape == image.shape and values.shape[0] == len(names) and values.shape[1] >= 4  # layers on y
    assert values[-1, -1] == pytest.approx(20 * 4 * 1e-4) and values[0, 0] == 0.0  # head drifts most, at the end
    assert image[-1, -1] == pytest.approx(np.log10(20 * 4 * 1e-4)) == image.max()  # log colour scale
    ticks = [t for _, t in m.drift.getPlotItem().getAxis("left")._tickLevels[0]]
    assert ticks[0] == "emb" and ticks[-1] == "head"
    assert m.retention.x == [0, 5, 10, 20]
    assert "general text (forgetting)" in m.loss_plot.getPlotItem().titleLabel.text  # the key, in the title
    m.reset()
    assert m.drift.steps == [] and m.drift.empty.isVisible()


def test_help_explains_forgetting_remedies(make_window):
    from PySide6.QtGui import QAction

    from ftstudio.gui import help_text

    win = make_window()
    titles = [a.text() for a in win.findChildren(QAction)]
    assert "Forgetting and its remedies" in titles
    text = win._help_box("Forgetting and its remedies", help_text.FORGETTING).text()
    for words in ("toward <b>zero</b>", "θ0", "EWC", "mix_fraction", "ξ", "low learning rate"):
        assert words in text


def test_memory_plot_ticks_read_in_one_unit_and_its_key_covers_no_data(make_window):
    from ftstudio.core.events import MemorySnapshot
    from ftstudio.gui.monitor import BytesAxis

    axis = BytesAxis("left")
    assert axis.tickStrings([0.0, 1e8, 2e8, 3e8], 1.0, 1e8) == ["0 MB", "100 MB", "200 MB", "300 MB"]
    assert axis.tickStrings([0.0, 2e10, 4e10], 1.0, 2e10) == ["0 GB", "20 GB", "40 GB"]
    assert axis.tickStrings([0.0, 5e8, 1e9, 1.5e9], 1.0, 5e8) == ["0.0 GB", "0.5 GB", "1.0 GB", "1.5 GB"]
    m = make_window().monitor
    for step in (1, 2, 3):  # a flat line: the axis still starts at zero with round ticks
        m.handle(MemorySnapshot(step=step, device="cpu", weights=363_461_156, gradients=0, optimizer=0))
    m._flush()
    lo, hi = m.mem_plot.getPlotItem().viewRange()[1]
    assert lo == 0 and hi == pytest.approx(363_461_156 * 1.15)
    assert m.mem_plot.getPlotItem().legend is None and "tensors + allocator" in m.mem_plot.getPlotItem().titleLabel.text


def test_training_thread_runs_at_lower_priority_than_the_gui():
    import os
    import threading

    from ftstudio.gui.worker import TRAINING_NICE, lower_priority

    if not hasattr(os, "setpriority"):
        pytest.skip("no per-thread priorities here")
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []

    def body():
        lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [max(base, TRAINING_NICE)]  # that thread only...
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # ...not the GUI thread


def test_stall_probe_tells_gil_holds_from_starvation():
    from ftstudio.gui.stall_probe import StallProbe

    probe = StallProbe()
    base = {"stall_ms": 200.0, "gui_cpu_ms": 1.0, "gui_queue_ms": 1.0, "gui_sleep_ms": 1.0}
    assert "GIL" in probe.verdict({**base, "gui_sleep_ms": 190.0})
    assert "starvation" in probe.verdict({**base, "gui_queue_ms": 150.0})
    assert "GUI thread busy" in probe.verdict({**base, "gui_cpu_ms": 150.0})
    probe.beat(0.0, 0.0)
    probe.beat(0.25, 230.0)  # a real reading of this thread's /proc schedstat: it slept, so "asleep"
    assert len(probe.reports) == 1 and probe.reports[0]["wall_ms"] == 250.0


def test_relative_output_moves_home_when_the_start_folder_is_read_only(make_window, monkeypatch, tmp_path):
    import os
    from pathlib import Path

    from ftstudio.gui.app import _writable_output

    win = make_window(output="runs")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # e.g. double-clicked from a read-only share
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
    _writable_output(win)
    assert win.config().train.output == str(tmp_path / "home" / "ftstudio-runs" / "runs")
    assert "not writable" in win.status_text and win.undo_button.isVisible()  # said, as every change of its own
    keep = make_window(output=str(tmp_path / "abs"))
    _writable_output(keep)
    assert keep.config().train.output == str(tmp_path / "abs")  # an absolute choice is the user's


def test_a_run_killed_after_its_checkpoint_reopens_without_doubled_steps(qtbot):
    """Trial: kill -9 at step 5 after a checkpoint at step 3, then --resume: metrics.jsonl holds steps 4-5 twice,
    and the reopened run's curves ran back from 5 to 4. The resume's points replace the killed attempt's, said."""
    from ftstudio.core import events as ev
    from ftstudio.gui.monitor import Monitor

    m = Monitor()
    qtbot.addWidget(m)

    def started(frm):
        return ev.RunStarted(run_dir="r", model="m", task="causal-lm", device="cpu", precision="fp32", params=1,
                             total_steps=8, train_rows=8, val_rows=0, resumed_from_step=frm)
    history = [started(0)] + [StepMetrics(step=s, loss=1.0 / s, lr=1e-4, grad_norm=1.0, tokens_per_s=1.0)
                              for s in range(1, 6)]
    history += [started(3)] + [StepMetrics(step=s, loss=0.5 / s, lr=1e-4, grad_norm=1.0, tokens_per_s=1.0)
                               for s in range(4, 9)]
    m.show_history([e.to_dict() for e in history])
    assert m.train.x == [1, 2, 3, 4, 5, 6, 7, 8] and m.train.y[3] == 0.5 / 4
    assert "2 points past step 3 are redrawn by the resume" in m.log.toPlainText()
