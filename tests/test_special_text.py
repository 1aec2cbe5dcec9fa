"""An answer that writes the end-of-turn token as text ("the token <|end|> ends it") was trained as written, the
tokenizer reading it as the token itself: the model learns to end its turn mid-answer. Nothing was said."""
from __future__ import annotations

import json

from ftstudio.core.config import DataConfig
from ftstudio.engine.data import check_data


def _chat(path, answers):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for a in answers))
    return str(path)


def test_special_tokens_written_in_answers_are_said_with_row_and_field(tmp_path, tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert tok("a <|end|> b")["input_ids"].count(tok.convert_tokens_to_ids("<|end|>")) == 1   # read as the token
    answers = ["yes good"] * 8 + ["the token <|end|> ends a turn", "then <|user|> speaks"]
    report = check_data(DataConfig(dataset=_chat(tmp_path / "d.jsonl", answers), val_fraction=0.0), str(tiny_llama))
    said = [p for p in report.problems if "special tokens as plain text" in p.reason]
    assert len(said) == 1 and said[0].severity == "warning"
    assert said[0].row == 9 and said[0].field == "messages[1].content"
    assert "2 rows hold" in said[0].reason and "'<|end|>'" in said[0].reason and "row 10" in said[0].reason
    assert report.rows == 10   # said, not dropped: the user decides


def test_clean_rows_and_plain_text_rows_say_nothing(tmp_path, tiny_llama):
    report = check_data(DataConfig(dataset=_chat(tmp_path / "d.jsonl", ["yes good"] * 10), val_fraction=0.0),
                        str(tiny_llama))
    assert not [p for p in report.problems if "special tokens" in p.reason]
    text = tmp_path / "t.jsonl"
    text.write_text("".join(json.dumps({"text": f"doc {i} <|end|> next"}) + "\n" for i in range(10)))
    report = check_data(DataConfig(dataset=str(text), val_fraction=0.0), str(tiny_llama))
    assert not [p for p in report.problems if "special tokens" in p.reason]   # text rows: separators on purpose
