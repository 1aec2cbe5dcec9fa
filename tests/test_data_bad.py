"""Malformed input: every kind gives a DataProblem naming the file, the 1-based row and the field.

Each case writes files into tmp_path, runs check_data (which must not raise) and prepare_data (which must
raise one DataError carrying the same problem), and checks the problem's file, row, field and reason.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftstudio.core.config import DataConfig
from ftstudio.core.errors import DataError
from ftstudio.engine.data import check_data, load_records, prepare_data


def J(*objs) -> str:
    return "\n".join(json.dumps(o) for o in objs) + "\n"


def chat(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


OK_CHAT = chat(("user", "hi"), ("assistant", "yes"))
CLS = [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}]

# (id, {file: content}, DataConfig kwargs, task, expected (file, row, field, reason substring))
CASES = [
    ("invalid_json_line", {"d.jsonl": '{"text": "a"}\n{"text": "b"\n'}, {}, None,
     ("d.jsonl", 2, None, "invalid JSON at column")),
    ("line_is_array", {"d.jsonl": '{"text": "a"}\n["a", "b"]\n'}, {}, None, ("d.jsonl", 2, None, "JSON array")),
    ("line_is_string", {"d.jsonl": '{"text": "a"}\n"just text"\n'}, {}, None, ("d.jsonl", 2, None, "JSON string")),
    ("text_wrong_type", {"d.jsonl": J({"text": "a"}, {"text": 5})}, {}, None,
     ("d.jsonl", 2, "text", "expected a string, got a number")),
    ("text_is_object", {"d.jsonl": J({"text": "a"}, {"text": {"body": "b"}})}, {}, None,
     ("d.jsonl", 2, "text", "got an object")),
    ("missing_completion", {"d.jsonl": J({"prompt": "a", "completion": "b"}, {"prompt": "c"})}, {}, None,
     ("d.jsonl", 2, "completion", "missing field 'completion'")),
    ("misspelt_field", {"d.jsonl": J({"prompt": "a", "completion": "b"}, {"prompt": "a", "completoin": "b"})},
     {}, None, ("d.jsonl", 2, "completion", "did you mean 'completoin'")),
    ("unexpected_message_field", {"d.jsonl": J({"messages": [{"role": "user", "contnet": "hi"},
                                                             {"role": "assistant", "content": "yes"}]})},
     {}, None, ("d.jsonl", 1, "messages[0].content", "missing field 'content'")),  # 'contnet': a warning
    ("empty_file", {"d.jsonl": b""}, {}, None, ("d.jsonl", None, None, "empty")),
    ("blank_lines_only", {"d.csv": "\n   \n\n"}, {}, None, ("d.csv", None, None, "empty")),
    ("json_no_rows", {"d.json": "[]"}, {}, None, ("d.json", None, None, "no rows")),
    ("empty_text", {"d.jsonl": J({"text": "a"}, {"text": "   "})}, {}, None, ("d.jsonl", 2, "text", "empty")),
    ("null_text", {"d.jsonl": J({"text": "a"}, {"text": None})}, {}, None, ("d.jsonl", 2, "text", "null")),
    ("not_utf8", {"d.jsonl": b'{"text": "a"}\n{"text": "caf\xe9"}\n'}, {}, None, ("d.jsonl", 2, None, "UTF-8")),
    ("utf16", {"d.jsonl": '{"text": "a"}\n'.encode("utf-16")}, {}, None, ("d.jsonl", None, None, "UTF-16")),
    ("binary", {"d.jsonl": b"\x7fELF\x00\x01\x02" * 20}, {}, None, ("d.jsonl", None, None, "binary")),
    ("parquet_bytes_as_jsonl", {"d.jsonl": b"PAR1\x15\x04garbage"}, {}, None, ("d.jsonl", None, None, "Parquet")),
    ("extremely_long_line", {"d.jsonl": '{"text": "a"}\n{"text": "' + "x" * 1_000_001 + '"}\n'}, {}, None,
     ("d.jsonl", 2, None, "characters long")),
    ("ragged_csv_extra_field", {"d.csv": "text,label\na,x\nb,y,z\n"}, {}, None, ("d.csv", 3, None, "3 fields")),
    ("ragged_csv_missing_field", {"d.csv": "text,label\na,x\nb\n"}, {}, None, ("d.csv", 3, None, "1 field ")),
    ("ragged_tsv", {"d.tsv": "text\tlabel\na\tx\nb\ty\tq\n"}, {}, None, ("d.tsv", 3, None, "3 fields")),
    ("csv_duplicate_header", {"d.csv": "text,text\na,b\n"}, {}, None, ("d.csv", 1, "text", "appears twice")),
    ("csv_empty_header", {"d.csv": "text,\na,b\n"}, {}, None, ("d.csv", 1, "column 2", "empty column name")),
    ("csv_unclosed_quote", {"d.csv": 'text,label\n"a,x\nb,y\n'}, {}, None, ("d.csv", 2, None, "unclosed quote")),
    ("val_label_unseen", {"t.jsonl": J(*CLS), "v.jsonl": J({"text": "e", "label": "x"}, {"text": "f", "label": "z"})},
     {"val_dataset": "v.jsonl"}, None, ("v.jsonl", 2, "label", "does not occur in the training data")),
    ("chat_no_assistant", {"d.jsonl": J(OK_CHAT, chat(("system", "be nice"), ("user", "hi")))}, {}, None,
     ("d.jsonl", 2, "messages", "no assistant turn")),
    ("unknown_role", {"d.jsonl": J(chat(("user", "hi"), ("bot", "yes")))}, {}, None,
     ("d.jsonl", 1, "messages[1].role", "unknown role 'bot'")),
    ("messages_not_list", {"d.jsonl": J({"messages": {"role": "user", "content": "hi"}})}, {}, None,
     ("d.jsonl", 1, "messages", "expected a list of turns, got an object")),
    ("message_not_object", {"d.jsonl": J({"messages": ["hi", {"role": "assistant", "content": "yes"}]})}, {}, None,
     ("d.jsonl", 1, "messages[0]", "expected an object with 'role' and 'content'")),
    ("empty_messages", {"d.jsonl": J(OK_CHAT, {"messages": []})}, {}, None, ("d.jsonl", 2, "messages", "empty")),
    ("content_not_string", {"d.jsonl": J({"messages": [{"role": "user", "content": {"text": "hi"}},
                                                       {"role": "assistant", "content": "yes"}]})}, {}, None,
     ("d.jsonl", 1, "messages[0].content", "expected a string, got")),
    ("empty_assistant_content", {"d.jsonl": J(chat(("user", "hi"), ("assistant", "")))}, {}, None,
     ("d.jsonl", 1, "messages[1].content", "empty")),
    ("sharegpt_unknown_speaker", {"d.jsonl": J({"conversations": [{"from": "human", "value": "hi"},
                                                                  {"from": "robot", "value": "yes"}]})}, {}, None,
     ("d.jsonl", 1, "conversations[1].from", "unknown speaker 'robot'")),
    ("sharegpt_with_openai_keys", {"d.jsonl": J({"conversations": [{"role": "user", "content": "hi"}]})}, {}, None,
     ("d.jsonl", 1, "conversations[0].content", "OpenAI chat")),
    ("alpaca_missing_output", {"d.jsonl": J({"instruction": "do it", "input": ""})}, {"format": "alpaca"}, None,
     ("d.jsonl", 1, "output", "missing field 'output'")),
    ("label_column_missing", {"d.jsonl": J(*CLS)}, {"format": "classification", "label_column": "category"}, None,
     ("d.jsonl", None, "category", "label column 'category' is missing")),
    ("label_missing_in_row", {"d.jsonl": J(*CLS, {"text": "e f"})}, {}, None,
     ("d.jsonl", 3, "label", "missing label column")),
    ("text_column_override_missing", {"d.jsonl": J({"body": "a", "label": "x"}, {"body": "b", "label": "y"})},
     {"text_column": "text", "format": "classification"}, None, ("d.jsonl", None, "text", "no text column 'text'")),
    ("text_missing_in_one_row", {"d.jsonl": J({"text": "a", "label": "x"}, {"body": "b", "label": "y"})},
     {"format": "classification"}, None, ("d.jsonl", 2, "text", "missing field 'text'")),
    ("label_null", {"d.jsonl": J(*CLS, {"text": "e", "label": None})}, {}, None, ("d.jsonl", 3, "label", "null")),
    ("label_empty", {"d.jsonl": J(*CLS, {"text": "e", "label": " "})}, {}, None, ("d.jsonl", 3, "label", "empty")),
    ("label_float", {"d.jsonl": J(*CLS, {"text": "e", "label": 0.5})}, {}, None,
     ("d.jsonl", 3, "label", "class name or an integer id, got a number")),
    ("label_boolean", {"d.jsonl": J(*CLS, {"text": "e", "label": True})}, {}, None,
     ("d.jsonl", 3, "label", "boolean")),
    ("label_mixed_types", {"d.jsonl": J(*CLS, {"text": "e", "label": 1})}, {}, None,
     ("d.jsonl", 3, "label", "an integer here but a string in row 1")),
    ("single_class", {"d.jsonl": J({"text": "a", "label": "x"}, {"text": "b", "label": "x"})}, {}, None,
     ("d.jsonl", None, "label", "only one class")),
    ("duplicate_keys", {"d.jsonl": '{"text": "a", "text": "b"}\n'}, {}, None,
     ("d.jsonl", 1, "text", "appears more than once")),
    ("duplicate_nested_keys", {"d.jsonl": '{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}\n'},
     {}, None, ("d.jsonl", 1, "messages[0].role", "appears more than once")),
    ("mixed_formats_across_rows", {"d.jsonl": J({"text": "a"}, OK_CHAT)}, {}, None,
     ("d.jsonl", 2, "text", "looks like 'chat' data")),
    ("json_not_array", {"d.json": "42"}, {}, None, ("d.json", None, None, "expected an array of objects")),
    ("json_truncated", {"d.json": '[{"text": "a"},\n{"text": "b"'}, {}, None, ("d.json", 2, None, "invalid JSON")),
    ("json_item_not_object", {"d.json": '[{"text": "a"}, 3]'}, {}, None,
     ("d.json", 2, None, "item 2 is a JSON number")),
    ("corrupt_parquet", {"d.parquet": b"PAR1 this is not really parquet PAR1"}, {}, None,
     ("d.parquet", None, None, "not a readable Parquet file")),
    ("unsupported_extension", {"d.xlsx": b"PK\x03\x04"}, {}, None, ("d.xlsx", None, None, "unsupported file type")),
    ("missing_file", {}, {"dataset": "nope.jsonl"}, None, ("nope.jsonl", None, None, "no such file")),
    ("task_needs_labels", {"d.jsonl": J({"text": "a"}, {"text": "b"})}, {}, "classification",
     ("d.jsonl", None, "label", "classification needs a text column and a label column")),
    ("causal_lm_on_labelled_data", {"d.jsonl": J(*CLS)}, {}, "causal-lm",
     ("d.jsonl", None, "label", "this is classification data")),
]


def _write(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_names_file_row_and_field(case, tmp_path, monkeypatch):
    _id, files, kwargs, task, (fname, row, fld, reason) = case
    _write(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    kwargs = {"dataset": next(iter(files), "x"), "val_fraction": 0.0, **kwargs}
    cfg = DataConfig(**kwargs)
    report = check_data(cfg, task=task)
    assert not report.ok
    hits = [p for p in report.errors if Path(p.path).name == fname and p.row == row and p.field == fld
            and reason in p.reason]
    assert hits, f"expected ({fname}, {row}, {fld}, {reason!r}); got {[str(p) for p in report.errors]}"
    assert report.to_dict()["errors"], "the JSON report lists the problem"
    from tiny import make_tokenizer
    with pytest.raises(DataError) as exc:
        prepare_data(cfg, make_tokenizer(), task=task or "auto", seed=0)
    assert any(p.row == row and p.field == fld and reason in p.reason for p in exc.value.problems)


def test_distinct_kinds_at_least_30():
    assert len({c[0] for c in CASES}) >= 30


def test_every_bad_row_is_reported_not_just_the_first(tmp_path):
    lines = [json.dumps({"text": "ok"})] + ["{broken"] * 3 + [json.dumps({"text": 7})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        load_records(str(tmp_path / "d.jsonl"))
    assert [p.row for p in exc.value.problems] == [2, 3, 4]  # loading checks syntax; types are checked later
    report = check_data(DataConfig(dataset=str(tmp_path / "d.jsonl")))
    assert sorted(p.row for p in report.errors) == [2, 3, 4, 5]
    assert "and 2 more problems" in str(exc.value)


def test_utf8_bom_is_accepted_with_a_warning(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\na b,x\nc d,y\n")
    assert load_records(str(p)) == [{"text": "a b", "label": "x"}, {"text": "c d", "label": "y"}]
    report = check_data(DataConfig(dataset=str(p), val_fraction=0.0))
    assert report.ok and report.format == "classification"
    assert [(w["row"], "byte-order mark" in w["reason"]) for w in report.to_dict()["warnings"]] == [(1, True)]


def test_template_refusal_names_the_row(tmp_path):
    from tiny import make_tokenizer
    tok = make_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    (tmp_path / "c.jsonl").write_text(J(OK_CHAT, chat(("system", "x"), ("user", "hi"), ("assistant", "yes"))))
    cfg = DataConfig(dataset=str(tmp_path / "c.jsonl"), val_fraction=0.0)
    with pytest.raises(DataError) as exc:
        prepare_data(cfg, tok, task="causal-lm", seed=0)
    (p,) = exc.value.problems
    assert (p.row, p.field) == (2, "messages") and "System role not supported" in p.reason


def test_prompt_longer_than_seq_len_is_a_warning_and_skipped(tmp_path):
    from tiny import make_tokenizer
    long_prompt = " ".join(["the"] * 20)
    (tmp_path / "p.jsonl").write_text(J({"prompt": long_prompt, "completion": " yes"},
                                        {"prompt": "the", "completion": " yes"}))
    cfg = DataConfig(dataset=str(tmp_path / "p.jsonl"), val_fraction=0.0, seq_len=8)
    data = prepare_data(cfg, make_tokenizer(), task="causal-lm", seed=0)
    assert len(data.train) == 1
    report = check_data(cfg, make_tokenizer())
    assert report.ok and any(w["row"] == 1 and "seq_len=8" in w["reason"] for w in report.to_dict()["warnings"])


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    report = check_data(DataConfig(dataset=str(tmp_path)))
    (p,) = report.errors
    assert p.row is None and "not a dataset saved by datasets.save_to_disk" in p.reason and "notes.md" in p.reason


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = check_data(DataConfig(dataset="someone/some-dataset"))
    (p,) = report.errors
    assert p.path == "someone/some-dataset" and "offline" in p.reason


@pytest.mark.parametrize("bad_rows", [1, 2])
def test_a_refused_file_says_each_problem_once(tiny_llama, tmp_path, bad_rows):
    """One bad row: the run's failure reason is that line, and nothing else repeats it. Several: one line each,
    and the reason names the first and counts the rest."""
    from ftstudio.core.events import LogLine, RunFailed
    from test_trainer import lm_config, run

    path = tmp_path / "d.jsonl"
    path.write_text(J(*[{"text": "" if i < bad_rows else f"fine row {i}"} for i in range(6)]))
    result, events = run(lm_config(tiny_llama, path, tmp_path / "runs"))
    assert isinstance(result, RunFailed)
    said = [e.message for e in events if isinstance(e, LogLine) and e.level == "error"]
    first = f"{path}, row 1, field 'text': text is empty; fill it in, or remove the row"
    if bad_rows == 1:
        assert said == [] and result.reason == first
    else:
        assert said == [first, f"{path}, row 2, field 'text': text is empty; fill it in, or remove the row"]
        assert result.reason == first + " (and 1 more problem)"


def test_a_named_column_the_format_does_not_read_is_said(tmp_path):
    """Trial: --text-column nosuch on prompt-completion rows passed without a word (the flag was simply unused)."""
    p = tmp_path / "pc.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": "a b", "completion": "c d"}) for _ in range(4)) + "\n")
    report = check_data(DataConfig(dataset=str(p), text_column="nosuch", val_fraction=0.0))
    assert not report.ok and [(e.field, "no such column" in e.reason) for e in report.errors] == [("nosuch", True)]
    report = check_data(DataConfig(dataset=str(p), text_column="prompt", val_fraction=0.0))
    assert report.ok and report.format == "prompt-completion"
    assert any("--text-column prompt: not read" in w["reason"] for w in report.to_dict()["warnings"])
    assert check_data(DataConfig(dataset=str(p), val_fraction=0.0)).to_dict()["warnings"] == []


def test_fields_beside_a_json_files_list_of_rows_are_said(tmp_path):
    """Trial: {"data": [...], "version": "1"} read the rows and dropped "version" without a word."""
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"data": [{"text": "a b"}, {"text": "c d"}], "version": "1", "source": "x"}))
    report = check_data(DataConfig(dataset=str(p), val_fraction=0.0))
    assert report.ok and report.rows == 2
    said = [p for p in report.problems if "'version', 'source'" in p.reason and "not read" in p.reason]
    assert len(said) == 1 and said[0].severity == "info"
    q = tmp_path / "plain.json"
    q.write_text(json.dumps({"data": [{"text": "a b"}, {"text": "c d"}]}))
    assert not check_data(DataConfig(dataset=str(q), val_fraction=0.0)).problems


def test_classes_of_one_row_are_named_in_one_plain_warning(tmp_path):
    """Trial: two single-row classes were said as "2 classes have a single row, so it cannot be ..."."""
    p = tmp_path / "c.csv"
    p.write_text("text,label\na b,x\nc d,y\ne f,z\ng h,z\n", encoding="utf-8")
    warns = [w["reason"] for w in check_data(DataConfig(dataset=str(p))).to_dict()["warnings"]]
    assert any(w.startswith("2 classes have a single row, so they cannot be in the validation split: 'x' (row 2), "
                            "'y' (row 3)") for w in warns), warns
