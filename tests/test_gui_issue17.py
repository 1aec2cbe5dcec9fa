"""Issue 17, the window a researcher trusts: the theme menu, the wheel over the form, a failed model choice,
Start's data check, the training form by intent, read-only setup during a run, the result in the status line,
the drift strip's order, advice with Apply, CPU-only plans, classifier results and Compare's streaming."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QGroupBox, QLabel  # noqa: E402

from ftstudio.core import config as C  # noqa: E402
from ftstudio.core.events import DriftMetrics, EvalMetrics, RunFailed, RunFinished  # noqa: E402
from test_gui import (lm_window, make_window, no_dangling_threads, wait_ready, write_broken_data,  # noqa: E402,F401
                      write_lm_data)


def wheel(widget, dy=-120):
    """A wheel notch over ``widget`` (negative: scroll down), delivered as the window system would."""
    pos = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(0, 0), QPoint(0, dy), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


# -- View → Dark / Light ------------------------------------------------------------------------------
def test_view_menu_switches_the_theme_and_keeps_it(make_window, qtbot, tmp_path):
    win = make_window()
    assert win.theme == "light"
    win.theme_actions["dark"].trigger()
    assert win.theme == "dark" and win.theme_actions["dark"].isChecked()
    assert QApplication.instance().palette().window().color().lightness() < 80
    assert win.monitor.loss_plot.backgroundBrush().color().lightness() < 80
    assert win.settings.value("theme") == "dark"
    from ftstudio.gui.main_window import MainWindow  # a new window opens in the kept theme
    again = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(again)
    assert again.theme == "dark" and again.theme_actions["dark"].isChecked()
    again.shutdown()
    win.theme_actions["light"].trigger()
    assert win.theme == "light" and QApplication.instance().palette().window().color().lightness() > 150


# -- the mouse wheel scrolls the form ---------------------------------------------------------------
def test_wheel_over_the_form_scrolls_it_and_changes_no_field(make_window, qtbot):
    win = make_window()
    win.left.setCurrentWidget(win.training_panel)
    panel = win.training_panel
    for g in panel.groups.values():
        g.set_expanded(True)  # a long form, longer than the tab
    qtbot.wait(50)
    bar = panel.scroll.verticalScrollBar()
    assert bar.maximum() > 0
    seq, precision = panel.editors["seq_len"].widget, panel.editors["precision"].widget
    before = (seq.value(), precision.currentText(), panel.config())
    for w in (seq, precision, panel.editors["grad_accum"].widget, panel.editors["optimizer"].widget):
        wheel(w)
    assert (seq.value(), precision.currentText(), panel.config()) == before
    assert bar.value() > 0  # the form scrolled instead
    seq.setFocus()
    qtbot.waitUntil(seq.hasFocus, timeout=2_000)
    wheel(seq, dy=120)
    assert seq.value() != before[0]  # a focused control still takes the wheel


# -- a failed model choice ------------------------------------------------------------------------
def test_failed_model_choice_clears_the_facts_and_disables_start(make_window, qtbot, tmp_path, tiny_llama):
    win = make_window()
    wait_ready(qtbot, win)
    assert win.start_button.isEnabled()
    missing = str(tmp_path / ("a_very_long_folder_name_without_spaces_" * 6) / "model")
    width_before = win.left.width()
    with qtbot.waitSignal(win.model_panel.modelFailed, timeout=30_000):
        win.model_panel.choose(missing)
    f = win.model_panel.fields
    assert f["params"].text() == "–" and f["architecture"].text() == "–"  # not the demo's facts any more
    assert win.model_info is None and not win.start_button.isEnabled()
    assert win.start_run() is False and not win.runs.running
    assert "Cannot use" in win.model_panel.status.text()
    qtbot.wait(50)
    assert win.width() == 1280 and win.left.width() <= width_before + 2  # the long error wraps in place
    assert win.model_panel.status.sizeHint().width() < 600
    with qtbot.waitSignal(win.model_panel.modelChanged, timeout=30_000):
        win.model_panel.choose(str(tiny_llama))
    assert win.start_button.isEnabled() and f["params"].text() != "–"


# -- Start checks the data ------------------------------------------------------------------------
def test_start_button_checks_the_data(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path, dataset=str(write_broken_data(tmp_path / "bad.jsonl")))
    wait_ready(qtbot, win)
    assert win.data_panel.error
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)  # clicked(bool) passes False
    assert not win.runs.running and "Fix the data" in win.status_text
    start = next(a for a in win.menuBar().actions()[1].menu().actions() if a.text() == "Start")
    start.trigger()
    assert not win.runs.running


def test_start_while_the_data_is_checked_waits_for_the_check(make_window, qtbot, tiny_llama, tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path)
    wait_ready(qtbot, win)
    bad = str(write_broken_data(tmp_path / "bad.jsonl"))
    win.training_panel.set_value("dataset", bad)
    assert win.checks_pending()
    assert win.start_run() is False and "Checking the data" in win.status_text
    qtbot.waitUntil(lambda: not win.checks_pending(), timeout=60_000)
    qtbot.wait(50)
    assert not win.runs.running and "Fix the data" in win.status_text  # the check ran first, and said no


# -- the training tab by intent -------------------------------------------------------------------
def test_training_tab_puts_the_everyday_choices_first_in_words(make_window):
    panel = make_window().training_panel
    assert panel.essential_rows == ["lr", "epochs", "max_steps", "batch_size", "seq_len", "precision"]
    ess = panel.findChild(QGroupBox, "essentialsBox")
    for leaf in panel.essential_rows:
        assert ess.isAncestorOf(panel.editors[leaf].widget)
    assert all(not g.expanded for g in panel.groups.values())  # the rest collapsed
    assert not panel.editors["beta2"].widget.isVisibleTo(panel)
    label = panel.findChild(QLabel, "label_lr")
    assert label.text() == "Learning rate" and "optim.lr" in label.toolTip()  # words; the field in the tooltip
    assert panel.findChild(QLabel, "label_grad_accum").text() == "Gradient accumulation"
    assert set(panel.editors) == set(C.LEAF_TO_SECTION)  # still every field
    panel.editors["warmup_ratio"].widget.setText("2")  # an error in a collapsed group opens it
    assert panel.groups["schedule"].expanded and panel.editors["warmup_ratio"].widget.isVisibleTo(panel)


# -- during a run ---------------------------------------------------------------------------------
def test_setup_is_read_only_during_a_run_and_runs_offers_no_resume_for_it(make_window, qtbot, tiny_llama,
                                                                            tmp_path):
    win = lm_window(make_window, tiny_llama, tmp_path, max_steps=100_000, eval_every=0, checkpoint_every=0)
    wait_ready(qtbot, win)
    assert win.start_run()
    qtbot.waitUntil(lambda: win.monitor.counts["step"] >= 1, timeout=120_000)
    assert not win.training_panel.isEnabled() and not win.data_panel.isEnabled()
    assert not win.model_panel.isEnabled()
    qtbot.waitUntil(lambda: bool(win.runs_tab.summaries), timeout=20_000)
    table = win.runs_tab.table
    item = table.topLevelItem(0)
    assert item.text(3) == "running"
    table.setCurrentItem(item)
    assert not win.runs_tab.buttons["Resume"].isEnabled()
    with qtbot.waitSignal(win.runFinished, timeout=60_000):
        win.stop_run()
    assert win.training_panel.isEnabled() and win.data_panel.isEnabled()
    qtbot.waitUntil(lambda: table.topLevelItemCount() and table.topLevelItem(0).text(3) != "running",
                    timeout=20_000)
    table.setCurrentItem(table.topLevelItem(0))
    assert win.runs_tab.buttons["Resume"].isEnabled()


# -- the status line states the result ------------------------------------------------------------
def test_status_line_states_the_result_with_its_metrics(make_window, capsys, monkeypatch):
    from ftstudio.gui import stall_probe
    monkeypatch.delenv(stall_probe.ENV, raising=False)
    win = make_window()
    win._run_done(RunFinished(status="finished", steps=54, train_loss=0.1234,
                              eval={"loss": 0.2, "accuracy": 0.958, "macro_f1": 0.957}, elapsed_s=54))
    text = win.status_text
    assert text.startswith("Run finished after 54 steps") and "accuracy 95.8%" in text and "macro-F1 0.957" in text
    assert "train loss 0.1234" in text and "stall" not in text and "heartbeat" not in text
    assert "heartbeat" not in win.monitor.log.toPlainText()
    win._run_done(RunFinished(status="stopped", steps=7, train_loss=1.5))
    assert win.status_text.startswith("Run stopped after 7 steps") and "1.5000" in win.status_text
    win._run_done(RunFailed(reason="CUDA out of memory", advice="Lower the batch size.", step=3))
    assert win.status_text == "Run failed at step 3: CUDA out of memory Lower the batch size."
    monkeypatch.setenv(stall_probe.ENV, "1")
    win._run_done(RunFinished(status="finished", steps=1, train_loss=1.0))
    assert "heartbeat" in win.monitor.log.toPlainText()


# -- the drift strip ------------------------------------------------------------------------------
def test_drift_strip_orders_layers_by_depth_clears_between_runs_and_has_a_colour_bar(make_window):
    win = make_window()
    m = win.monitor
    sorted_keys = ["embeddings", "head", "layer.0", "layer.1", "layer.10", "layer.2"]  # as JSON sorts them
    for step in (5, 10):
        m.handle(DriftMetrics(step=step, layers={n: step * 1e-4 for n in sorted_keys}, total=step * 1e-4))
    m._flush()
    assert m.drift.names == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.10", "head"]
    ticks = [t for _, t in m.drift.getPlotItem().getAxis("left")._tickLevels[0]]
    assert ticks[0] == "emb" and ticks[-1] == "head"
    bar = m.drift.colorbar
    lo, hi = bar.levels()
    assert (lo, hi) == pytest.approx(m.drift.image.levels, abs=1e-6) and hi > lo
    assert bar.isVisible() and "log colour" in m.drift.getPlotItem().titleLabel.text  # its ends, named
    m.reset()
    assert m.drift.names == [] and m.drift.last_matrix is None and m.drift.image.image is None
    assert m.drift.getPlotItem().getAxis("left")._tickLevels is None and "log colour" not in \
        m.drift.getPlotItem().titleLabel.text


# -- CPU-only plans -------------------------------------------------------------------------------
LLAMA8B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "vocab_size": 128256, "max_position_embeddings": 8192, "torch_dtype": "bfloat16"}


def test_plan_for_the_cpu_counts_no_cuda_context():
    from ftstudio.engine import memory

    auto = C.RunConfig().replace(device="auto", batch_size=2, seq_len=512)
    on_gpu = memory.estimate(LLAMA8B, auto)
    on_cpu = memory.estimate(LLAMA8B, auto, device="cpu")
    assert on_gpu.other >= memory.CUDA_CONTEXT and on_cpu.other == 0
    assert on_cpu.to_dict() == memory.estimate(LLAMA8B, auto.replace(device="cpu")).to_dict()
    advice = memory.solve(LLAMA8B, auto, int(64e9), device="cpu")
    assert not any("GPU" in c[0] or "bf16 weights" in c[0] for c in advice.changes)  # no GPU-only advice


def test_cpu_run_plans_against_the_machines_ram(make_window, qtbot):
    win = make_window(device="cpu")
    qtbot.waitUntil(lambda: win.hardware_panel.polled and win.memory_bar.plan is not None, timeout=30_000)
    win._update_plan()
    bar, ram = win.memory_bar, win.hardware_panel.cpu.ram_total_bytes
    assert bar.on_cpu and bar.capacity == ram and bar.capacity_label.startswith("CPU RAM")
    assert bar.plan.other == 0 and "CPU RAM" in bar.summary.text() and "per GPU" not in bar.summary.text()
    assert bar.canvas.scale() < 150e9 or ram * 1.05 >= 150e9  # the scale is the RAM's, not the cards'


# -- advice you can act on ------------------------------------------------------------------------
def test_advice_lists_changes_with_gains_and_apply_sets_the_field(make_window, qtbot, tmp_path):
    folder = tmp_path / "llama-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA8B), encoding="utf-8")
    win = make_window(source=str(folder), device="cuda", precision="bf16-mixed", batch_size=8, seq_len=2048)
    qtbot.waitUntil(lambda: win.model_info is not None and win.model_info.source == str(folder), timeout=30_000)
    win.hardware_panel.target.setCurrentIndex(win.hardware_panel.target.findText("80 GB card"))
    bar = win.memory_bar
    assert not bar.fits and bar.advice_box.isVisibleTo(win)
    rows = bar.shown_advice
    assert rows and len(bar.advice_buttons) == len(rows) <= bar.MAX_ADVICE
    assert [r for r in rows if r[3]] == bar.offered()[:len(rows)] or not bar.offered()  # what fits comes first
    assert all(saved > 0.005 * bar.plan.total for _, _, saved, _ in rows)  # no zero-gain entries
    labels = [bar.advice_grid.itemAt(k).widget() for k in range(bar.advice_grid.count())]
    texts = [w.text() for w in labels if isinstance(w, QLabel) and w.text().startswith("−")]
    assert len(texts) == len(rows)
    assert all(t.startswith("−") and not t.startswith("−0 ") and t != "−0.00 GB" for t in texts)
    desc, leaves, saved, fits = rows[0]
    before = bar.plan.total
    with qtbot.waitSignal(win.planUpdated, timeout=5_000):
        bar.advice_buttons[0].click()
    cfg = win.config()
    assert all(cfg.get(k) == v for k, v in leaves.items())
    assert bar.plan.total == pytest.approx(before - saved, rel=1e-6)


def test_card_labels_never_overprint_the_legend(qtbot):
    from ftstudio.engine import memory
    from ftstudio.gui.memory_bar import MemoryBar

    bar = MemoryBar()
    qtbot.addWidget(bar)
    cfg = C.RunConfig().replace(device="cuda", precision="bf16-mixed", batch_size=1, seq_len=1024)
    bar.set_plan(memory.estimate(LLAMA8B, cfg))
    fm = bar.canvas.fontMetrics()
    for width in (500, 800, 1066, 1600):
        bar.resize(width, 200)
        bar.canvas.resize(width, bar.canvas.height())
        for gb, label in ((24, "a 24 GB card"), (48, "GPU 0: NVIDIA RTX 6000 Ada (48.0 GB)"), (80, "80 GB card")):
            bar.set_capacity(gb * 1e9, label)
            scale = bar.canvas.scale()
            entries, cap = bar.canvas.legend_layout(fm, 60, lambda b: 70 + (width - 78) * min(b, scale) / scale)
            assert cap is not None
            assert not any(rect.intersects(cap) for _, rect in entries), (width, gb)


# -- Compare for causal LMs -----------------------------------------------------------------------
def with_token_type_ids(src, dst):
    """A copy of a tiny model whose tokenizer returns token_type_ids (as BERT-style tokenizers of some LMs do)."""
    import shutil
    shutil.copytree(src, dst)
    cfg_path = dst / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text(encoding="utf-8"))
    tc["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
    cfg_path.write_text(json.dumps(tc), encoding="utf-8")
    return dst


def test_compare_generates_with_token_type_ids_through_the_trained_template(tiny_llama, tiny_llama_no_template,
                                                                              tmp_path):
    from transformers import AutoTokenizer

    from ftstudio.engine.data.render import FALLBACK_CHAT_TEMPLATE
    from ftstudio.gui.compare_jobs import Sampling, generate_pair

    model = with_token_type_ids(tiny_llama, tmp_path / "ttids")
    assert "token_type_ids" in AutoTokenizer.from_pretrained(str(model))("the contract")  # what broke generate
    cfg = C.RunConfig().replace(source=str(model), device="cpu")
    pieces = []
    out = generate_pair(cfg, str(model), "the contract shall", 6, chat=True,
                        on_text=lambda which, text: pieces.append((which, text)))
    assert out["prompt"] == "<|user|>the contract shall<|end|><|assistant|>"  # the model's own template
    assert "".join(t for w, t in pieces if w == "tuned") == out["tuned"] and out["tuned"]  # streamed, all of it
    # a model trained without a template of its own was trained through the fallback: so is its prompt
    cfg = C.RunConfig().replace(source=str(tiny_llama_no_template), device="cpu")
    out = generate_pair(cfg, str(tiny_llama_no_template), "hello", 4, chat=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_no_template))
    assert out["prompt"] == tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                                    add_generation_prompt=True, chat_template=FALLBACK_CHAT_TEMPLATE)
    greedy = [generate_pair(cfg, str(tiny_llama_no_template), "hello", 12, chat=False)["tuned"] for _ in range(2)]
    assert greedy[0] == greedy[1]
    drawn = {s: generate_pair(cfg, str(tiny_llama_no_template), "hello", 12, chat=False,
                              sampling=Sampling(do_sample=True, temperature=1.5, top_p=1.0, seed=s))["tuned"]
             for s in (1, 1, 2)}
    assert len(drawn) == 2 and drawn[1] != drawn[2]  # a seed gives one draw; another seed another


def test_compare_tab_streams_into_the_boxes_before_the_job_ends(make_window, qtbot, tiny_llama, tmp_path):
    win = make_window()
    tab = win.compare_tab
    model = with_token_type_ids(tiny_llama, tmp_path / "ttids")
    tab.set_run(str(tmp_path), C.RunConfig().replace(source=str(model), device="cpu"), str(model), "causal-lm")
    import threading
    emitted_on = []  # the thread each piece was emitted on: the job's, while it generates
    tab.textStreamed.connect(lambda which, text: emitted_on.append(threading.get_ident()),
                             Qt.ConnectionType.DirectConnection)
    tab.prompt.setPlainText("the contract shall")
    tab.max_new.setValue(8)
    tab.sample.setChecked(True)
    with qtbot.waitSignal(tab.compared, timeout=60_000) as done:
        tab.generate()
        assert tab.busy and tab.stop_button.isEnabled() and not tab.gen_button.isEnabled()
    out = done.args[0]
    assert emitted_on and threading.get_ident() not in emitted_on  # pieces were sent while the job ran
    assert len(tab.streamed["base"]) + len(tab.streamed["tuned"]) == len(emitted_on)  # and each one shown
    assert tab.tuned_out.toPlainText() == out["tuned"] == "".join(tab.streamed["tuned"])
    assert "Comparison failed" not in tab.info.text() and tab.gen_button.isEnabled()


# -- classifier results ---------------------------------------------------------------------------
DEMO_LABELS = ["termination", "confidentiality", "liability", "indemnification", "governing law", "payment",
               "intellectual property", "force majeure"]


def test_confusion_matrix_is_a_labelled_heat_map_that_fits_at_1280x800(make_window, qtbot, tmp_path):
    win = make_window()
    tab = win.compare_tab
    win.center.setCurrentWidget(tab)
    tab.set_run(str(tmp_path), C.RunConfig(), None, "classification")
    n = len(DEMO_LABELS)
    matrix = [[(6 if i == j else (1 if j == (i + 1) % n else 0)) for j in range(n)] for i in range(n)]
    view = tab.heatmaps["tuned"]
    view.set_matrix(DEMO_LABELS, matrix)
    qtbot.wait(50)
    assert view.isVisible() and tab.rect().contains(view.geometry().translated(view.parentWidget().pos()))
    for i in range(n):
        for j in range(n):
            assert view.rect().toRectF().contains(view.cell_rect(i, j))  # the whole grid in view, no scrolling
            assert view.cell_text(i, j).split("\n")[0] == str(matrix[i][j])  # every count printed
    assert view.cell() >= view.fontMetrics().height()  # cells large enough to read
    assert view.share(0, 0) == pytest.approx(6 / 7) and view.share(0, 1) == pytest.approx(1 / 7)
    tab.cell_mode.setCurrentIndex(tab.cell_mode.findData("share"))
    assert view.cell_text(0, 0) == "86%" and view.cell_text(0, 2) == "0%"  # the row-normalised share
    from ftstudio.gui.compare_jobs import macro_f1
    assert macro_f1([[5, 0], [0, 5]]) == 1.0 and macro_f1([[5, 5], [0, 0]]) == pytest.approx((2 * 5 / 15) / 2)


def test_monitor_plots_accuracy_and_macro_f1_of_a_classifier(make_window):
    m = make_window().monitor
    assert not m.metric_axis.shown
    for step, acc, f1 in ((10, 0.5, 0.4), (20, 0.8, 0.75), (30, 0.95, 0.94)):
        m.handle(EvalMetrics(step=step, loss=1.0 / step, accuracy=acc, macro_f1=f1))
    m._flush()
    xs, ys = m.accuracy.curve.getData()
    assert list(xs) == [10, 20, 30] and list(ys) == [0.5, 0.8, 0.95]
    assert list(m.macro_f1.curve.getData()[1]) == [0.4, 0.75, 0.94]
    assert m.metric_axis.shown and "■ acc" in m.loss_plot.getPlotItem().titleLabel.text  # in the key
    assert m.loss_plot.getPlotItem().vb.viewRange()[0][0] <= 10  # the twin's curves do not narrow the loss plot
    m.handle(EvalMetrics(step=5, loss=2.0, perplexity=7.4))  # a causal LM's eval adds no accuracy point
    assert len(m.accuracy.y) == 3
    m.reset()
    assert not m.accuracy.y and not m.metric_axis.shown


def test_runs_table_shows_the_accuracy_of_a_classifier_run(make_window, qtbot, tmp_path):
    run = tmp_path / "runs" / "cls-run"
    run.mkdir(parents=True)
    C.RunConfig().replace(run_name="cls-run").save(run / "config.yaml")
    events = [{"event": "step", "step": 1, "loss": 2.0}, {"event": "eval", "step": 1, "loss": 1.5, "accuracy": 0.5},
              {"event": "finished", "status": "finished", "steps": 2, "train_loss": 1.0,
               "eval": {"loss": 0.9, "accuracy": 0.875}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    win = make_window(output=str(tmp_path / "runs"))
    tab = win.runs_tab
    with qtbot.waitSignal(tab.refreshed, timeout=10_000):
        tab.refresh()
    columns = [tab.table.headerItem().text(c) for c in range(tab.table.columnCount())]
    item = tab.table.topLevelItem(0)
    assert item.text(columns.index("accuracy")) == "87.5%"


# -- warnings where the user meets them -----------------------------------------------------------
def test_warnings_for_seq_len_past_the_context_duplicates_and_a_tokenizer_without_eos(make_window, qtbot,
                                                                                       tiny_llama, tmp_path):
    import shutil
    data = write_lm_data(tmp_path / "dups.jsonl", n=20)
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines + lines[:3]) + "\n", encoding="utf-8")  # three rows twice
    win = lm_window(make_window, tiny_llama, tmp_path, dataset=str(data), seq_len=1024)  # the model has 512
    wait_ready(qtbot, win)
    warn = win.training_panel.seq_warning
    assert warn.isVisibleTo(win.training_panel) and "512" in warn.text()
    dp = win.data_panel
    reasons = [p.reason for p in dp.warnings]
    assert any("longer than the model's context" in r for r in reasons)
    assert any("3 row(s) repeat an earlier row" in r for r in reasons), reasons
    assert not dp.error and not dp.status.text().startswith("Data OK")
    win.training_panel.editors["seq_len"].widget.setValue(256)
    assert not warn.isVisibleTo(win.training_panel)
    # a separate validation file that repeats training rows, and a tokenizer without EOS
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(lines[:2] + ['{"prompt": "new", "completion": "row"}']) + "\n", encoding="utf-8")
    model = tmp_path / "no-eos"
    shutil.copytree(tiny_llama, model)
    tc = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    tc["eos_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    (model / "special_tokens_map.json").unlink(missing_ok=True)
    win.training_panel.set_values(val_dataset=str(val), source=str(model))
    qtbot.waitUntil(lambda: win.model_info is not None and win.model_info.source == str(model), timeout=30_000)
    wait_ready(qtbot, win)
    reasons = [p.reason for p in dp.warnings]
    assert any("2 validation row(s) repeat a training row" in r and "rows 1, 2" in r for r in reasons), reasons
    assert any("no end-of-sequence token" in r for r in reasons), reasons


def test_data_ok_never_beside_a_tokenizer_error(make_window, qtbot, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                    "hidden_size": 64, "intermediate_size": 128,
                                                    "num_hidden_layers": 2, "num_attention_heads": 4,
                                                    "vocab_size": 100, "max_position_embeddings": 128}),
                                        encoding="utf-8")
    win = make_window(source=str(folder), dataset=str(write_lm_data(tmp_path / "lm.jsonl")), seq_len=64)
    qtbot.waitUntil(lambda: win.model_info is not None, timeout=30_000)
    wait_ready(qtbot, win)
    text = win.data_panel.status.text()
    assert "tokenizer did not load" in text and "Data OK" not in text
