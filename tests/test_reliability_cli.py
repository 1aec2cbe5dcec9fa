"""Bad input through the CLI: one clean line per problem (file, row/line, field), a non-zero exit, no
traceback, and nothing written to the output folder. The 50+ kinds of malformed data themselves are
covered at the API level in tests/test_data_bad.py; config values in tests/test_config.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ftstudio.cli import main

BAD_ROWS = [
    '{"text": "the party shall pay"}',
    '{"text": "the party shall',             # 2: invalid JSON
    '{"text": 5}',                           # 3: wrong type
    '{"text": "   "}',                       # 4: empty text
    '{"text": "a notice is due", "text": "x"}',  # 5: duplicate key
    '{"text": "the agreement is good"}',
]
EXPECTED = [("row 2", None, "invalid JSON"), ("row 3", "field 'text'", "expected a string"),
            ("row 4", "field 'text'", "empty"), ("row 5", "field 'text'", "more than once")]


@pytest.fixture
def bad_data(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_ROWS) + "\n", encoding="utf-8")
    return path




def _assert_one_line_per_problem(text: str, path, expected=EXPECTED) -> None:
    assert "Traceback" not in text
    # The closing "ftstudio: error: <first problem> (and N more)" line is the summary, not a listing.
    lines = [ln for ln in text.splitlines() if str(path) in ln and ", row " in ln
             and not ln.startswith("ftstudio: error:")]
    for row, field, reason in expected:
        hits = [ln for ln in lines if f"{path}, {row}" in ln and reason in ln and (field is None or field in ln)]
        assert len(hits) == 1, f"expected one line for {row} {field} {reason!r} in:\n{text}"
    assert len(lines) == len(expected), text


def test_check_data_prints_one_line_per_problem_and_exits_1(cli, bad_data, tiny_llama):
    code, out, err = cli("check-data", bad_data, "--model", tiny_llama)
    assert code == 1
    _assert_one_line_per_problem(out, bad_data)
    assert all(ln.startswith("error: ") for ln in out.splitlines() if ", row " in ln)
    code, out, _ = cli("check-data", bad_data, "--model", tiny_llama, "--json")
    assert code == 1 and len(json.loads(out.splitlines()[-1])["errors"]) == len(EXPECTED)


# `train` reads the file first (rows that are not JSON objects) and checks the fields after: each stage
# lists all of its problems before the run stops.
@pytest.mark.parametrize("rows, expected", [
    (BAD_ROWS[:2] + BAD_ROWS[4:], [EXPECTED[0], ("row 3", "field 'text'", "more than once")]),
    (BAD_ROWS[:1] + BAD_ROWS[2:4] + BAD_ROWS[5:], [("row 2", "field 'text'", "expected a string"),
                                                  ("row 3", "field 'text'", "empty")]),
], ids=["unreadable-rows", "bad-fields"])
def test_train_on_bad_data_prints_the_problems_and_writes_nothing(rows, expected, cli, tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out_dir = tmp_path / "runs"
    code, out, err = cli("train", "--model", tiny_llama, "--dataset", bad, "--output", out_dir,
                         "--device", "cpu", "--max-steps", "2", "--json")
    assert code == 1
    _assert_one_line_per_problem(err, bad, expected)
    assert json.loads(out.splitlines()[-1])["status"] == "failed"
    assert not out_dir.exists(), "a failed data check must not create the run folder"


def test_train_into_an_unwritable_output_folder_is_one_clear_line(cli, tiny_llama, tmp_path):
    from test_trainer import write_text_data
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = cli("train", "--model", tiny_llama, "--dataset", write_text_data(tmp_path / "d.jsonl", 16),
                       "--output", blocker / "runs", "--device", "cpu", "--max-steps", "2", "--quiet")
    assert code == 1 and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "error" in ln]
    assert "train.output" in line and str(blocker / "runs") in line and "Not a directory" in line


@pytest.mark.parametrize("yaml_text, argv, expect", [
    ("train:\n  lr: [1, 2\n", [], ["line 3", "invalid YAML"]),
    ("optim:\n  lr: -1\n", [], ["optim.lr", "cfg.yaml"]),
    ("optim:\n  learning_rate: 0.1\n", [], ["learning_rate", "cfg.yaml"]),
    ("train:\n  batch_size: many\n", [], ["train.batch_size", "cfg.yaml"]),
    ("", ["--lr", "-0.5"], ["lr"]),
    ("", ["--keep-last", "0"], ["keep_last"]),
    ("", ["--checkpoint-every", "-2"], ["checkpoint_every"]),
    ("", ["--max-skips", "-1"], ["max_skips"]),
])
def test_bad_config_is_one_line_naming_the_field_and_exit_2(yaml_text, argv, expect, cli, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml_text, encoding="utf-8")
    code, out, err = cli("train", cfg, *argv)
    assert code == 2 and "Traceback" not in err and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ftstudio: error: "), err
    for word in expect:
        assert word in lines[0], (word, err)


def test_bad_yaml_in_a_real_subprocess_names_the_line_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  source: demo\ntrain:\n  max_steps: 3\n  output: [unclosed\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "ftstudio", "train", str(cfg)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.yaml, line " in proc.stderr and "invalid YAML" in proc.stderr
