"""Issue 30: a table is read as a table. A headered TSV/CSV with one short, low-cardinality column and one text
column is classification with its roles named (overridable), in check-data and train; formats the column names
already say are read as before. Also: the data check reports class counts and imbalance, and a classifier's
evaluation its majority-class baseline, per-class precision/recall and a collapse onto one class."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftstudio.cli import main
from ftstudio.core.config import DataConfig
from ftstudio.engine.data import check_data
from ftstudio.engine.data.table import table_roles

SMS = Path(__file__).parent / "data" / "sms_messy.tsv"


def roles(records, **cfg):
    return table_roles(records, DataConfig(**cfg))


def _rows(label_key, text_key, n=30):
    texts = [f"message number {i} about the weather, lunch and the train home" for i in range(n)]
    return [{label_key: "spam" if i % 5 == 0 else "ham", text_key: t} for i, t in enumerate(texts)]


def test_a_label_column_in_another_case_and_one_other_column():
    r = roles(_rows("Label", "SMS"))
    assert (r.text, r.label, r.classes, r.how) == ("SMS", "Label", 2, "names")
    assert "'Label' names the label" in r.line() and "--text-column" in r.line()


def test_unknown_names_read_from_the_values():
    r = roles(_rows("kind", "msg"))
    assert (r.text, r.label, r.how) == ("msg", "kind", "values")
    ints = [{"y": i % 2, "body": f"a review of product {i}, quite long enough to be text"} for i in range(20)]
    assert (roles(ints).text, roles(ints).label) == ("body", "y")


@pytest.mark.parametrize("rows", [
    [{"text": f"a long paragraph of text number {i}", "source": "wiki"} for i in range(30)],  # LM text + metadata
    [{"prompt": f"is {i} even?", "completion": "yes" if i % 2 == 0 else "no"} for i in range(30)],
    [{"a": "x" if i % 2 else "y", "b": "p" if i % 3 else "q", "msg": f"some long message {i} here"} for i in range(30)],
    [{"messages": [{"role": "user", "content": "hi"}], "tag": "a"} for _ in range(5)],
])
def test_formats_the_names_say_and_ambiguous_tables_are_left_alone(rows):
    assert roles(rows) is None


def test_columns_named_by_the_user_win():
    assert roles(_rows("kind", "msg"), text_column="msg") is None
    assert roles(_rows("kind", "msg"), text_column="msg", label_column="kind") is None


def test_check_data_reads_the_messy_sms_tsv_as_classification_with_class_counts():
    report = check_data(DataConfig(dataset=str(SMS)), "demo")
    assert report.ok and report.format == "classification" and report.task == "classification"
    assert report.columns == {"text": "SMS", "label": "Label", "found_by": "names"}
    assert report.label_counts == {"ham": 45, "spam": 8} and report.rows == 53
    said = [p.reason for p in report.problems if p.severity != "error"]
    assert any(s.startswith("read as a table for classification: text column 'SMS', label column 'Label'")
               for s in said)
    assert any(s.startswith("classes are imbalanced: ham 45 (84.9%), spam 8 (15.1%); always answering 'ham' "
                            "scores 84.9% accuracy") for s in said)
    assert report.to_dict()["label_counts"] == {"ham": 45, "spam": 8}


def test_check_data_cli_prints_the_classes(capsys):
    assert main(["check-data", str(SMS)]) == 0
    out = capsys.readouterr().out
    assert "format classification" in out and "classes: ham 45 (84.9%), spam 8 (15.1%)" in out


def test_train_demo_on_the_tsv_trains_a_classifier_and_reports_what_its_accuracy_means(tmp_path, capsys):
    code = main(["train", "--demo", "--dataset", str(SMS), "--max-steps", "2", "--output", str(tmp_path),
                 "--run-name", "sms", "--json", "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    ev = summary["eval"]
    assert summary["status"] == "finished" and ev["accuracy"] is not None
    assert summary["train_loss_is"] == "mean of the last 2 steps"
    assert set(ev["per_class"]) == {"ham", "spam"} and ev["majority_class"] == "ham"
    val = sum(d["support"] for d in ev["per_class"].values())
    assert ev["majority_baseline"] == pytest.approx(ev["per_class"]["ham"]["support"] / val)
    if max(d["predicted"] for d in ev["per_class"].values()) >= 0.95 * val:
        assert "collapsed onto one class" in ev["collapsed"] and "collapsed onto one class" in captured.err
    lines = [json.loads(x) for x in (tmp_path / "sms" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["event"] == "eval"]
    assert evals and evals[-1]["majority_baseline"] == ev["majority_baseline"] and "per_class" in evals[-1]



try:   # the window's fixtures (pytest-qt); without it the window test is skipped, not the module
    from test_gui import make_window, no_dangling_threads, wait_ready  # noqa: F401 - fixtures used by name
except pytest.skip.Exception:
    make_window = None


@pytest.mark.skipif(make_window is None, reason="pytest-qt is not installed")
def test_the_window_reads_the_tsv_as_a_classification_table_and_previews_its_rows(make_window, qtbot):
    win = make_window(dataset=str(SMS))
    wait_ready(qtbot, win)
    report = win.data_panel.report
    assert report.format == "classification" and report.columns["label"] == "Label"
    text = win.data_panel.preview.toPlainText()
    assert "cannot be rendered" not in text and "→ ham" in text
