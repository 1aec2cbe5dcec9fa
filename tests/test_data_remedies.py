"""Every data error names its file, row and field and says how to fix it. Row-level value problems ("value is
null", "text is empty", "expected a string, got a number", "label is null", a conversation with no assistant turn,
a duplicated key or column...) said only what was wrong: a new user read "value is null" and had to guess whether
to drop the row, fill it in, or change a flag."""
from __future__ import annotations

from pathlib import Path

import pytest

HOSTILE = Path(__file__).parent / "data" / "hostile"

# file → (what is wrong, how to fix it): both on the one error line
REMEDIES = {
    "jsonl_text_null.jsonl": ("value is null", "fill it in, or remove the row"),
    "jsonl_text_empty.jsonl": ("text is empty", "fill it in, or remove the row"),
    "jsonl_text_number.jsonl": ("expected a string, got a number", "write it as text in quotes, or remove the row"),
    "chat_content_number.jsonl": ("expected a string, got a number", "write it as text in quotes"),
    "chat_messages_not_list.jsonl": ("expected a list of turns", 'write it as [{"role": "user"'),
    "chat_empty_messages.jsonl": ("the conversation is empty", "add its turns, or remove the row"),
    "chat_no_assistant.jsonl": ("no assistant turn", "add the answer as an assistant turn, or remove the row"),
    "jsonl_label_null.jsonl": ("label is null", "give the row its class, or remove it"),
    "csv_empty_label.csv": ("label is empty", "give the row its class, or remove it"),
    "jsonl_label_fraction.jsonl": ("class name or an integer id", "write the class as a string or a whole number"),
    "jsonl_duplicate_key.jsonl": ("appears more than once in this object", "keep one"),
    "csv_duplicate_header.csv": ("appears twice in the CSV header", "rename one"),
    "csv_empty_column_name.csv": ("empty column name", "name it in the header row"),
    "jsonl_invalid_line.jsonl": ("invalid JSON at column", "fix that spot, or remove the line"),
    "jsonl_deep_nesting.jsonl": ("too deep to read", "flatten it"),
    "binary_named.txt": ("binary file", "give a .jsonl, .json, .csv, .tsv, .txt or .parquet file"),
}


@pytest.fixture(scope="module")
def lines():
    """check-data's error lines for all the files at once, by file name (one process, as the CLI prints them)."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "ftstudio", "check-data", *(HOSTILE / n for n in REMEDIES)],
                          capture_output=True, text=True, cwd=root, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"})
    assert "Traceback" not in proc.stdout + proc.stderr
    out: dict[str, list[str]] = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("error: "):
            name = Path(line[len("error: "):].split(",")[0].split(":")[0]).name
            out.setdefault(name, []).append(line)
    return out


@pytest.mark.parametrize("name", list(REMEDIES))
def test_the_error_line_says_what_is_wrong_and_the_fix(name, lines):
    wrong, fix = REMEDIES[name]
    said = [ln for ln in lines.get(name, []) if wrong in ln]
    assert said, lines.get(name)
    assert all(fix in ln and str(HOSTILE / name) in ln for ln in said), said


def _labels(path, labels):
    import json
    path.write_text("".join(json.dumps({"text": f"review number {i}", "label": lab}) + "\n"
                            for i, lab in enumerate(labels)))
    return str(path)


def test_a_rare_label_spelt_like_a_common_one_is_said_as_a_likely_typo(tmp_path):
    """A TSV whose label column had 'postive' once among 'positive' rows: the typo trained as a fourth class,
    said only as "a class with a single row"."""
    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import check_data

    labels = ["positive", "negative", "neutral"] * 8 + ["postive", "Negative", "negative", "neutral"]
    report = check_data(DataConfig(dataset=_labels(tmp_path / "d.jsonl", labels), val_fraction=0.0))
    said = {p.reason.split(" (")[0]: p for p in report.problems if "misspelling" in p.reason}
    assert set(said) == {"label 'postive'", "label 'Negative'"}
    assert said["label 'postive'"].row == 25 and "misspelling of 'positive' (8 rows)" in said["label 'postive'"].reason
    assert "correct it if so" in said["label 'Negative'"].reason
    assert all(p.severity == "warning" for p in said.values())


def test_classes_of_similar_size_or_integer_ids_are_not_typos(tmp_path):
    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import check_data

    for labels in (["cat", "cats"] * 6, ["12", "13"] * 5 + ["12"] * 20, ["spam", "ham"] * 10):
        report = check_data(DataConfig(dataset=_labels(tmp_path / "d.jsonl", labels), val_fraction=0.0))
        assert not [p for p in report.problems if "misspelling" in p.reason], labels
