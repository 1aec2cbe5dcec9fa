"""Rows reach a chat model the way it is used: instruction rows through its chat template, the end-of-turn token
always under the loss (pad = eos templates, templates that re-render history, tokenizers that append EOS),
and chat data as users write it (weight 0, tools, content parts, reasoning)."""
from __future__ import annotations

import json

import pytest

from ftstudio.core.config import DataConfig
from ftstudio.core.errors import DataError
from ftstudio.engine.data import check_data, render_example
from tiny import make_tokenizer

TOK = make_tokenizer()                       # a chat template: <|role|>content<|end|>
TOK_NT = make_tokenizer(with_chat_template=False)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Qwen3-style: the reasoning of the last assistant turn is rendered, that of earlier turns is dropped, so the
# conversation rendered up to an earlier turn is not a prefix of the whole.
REASONING = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
             "{% if m['role'] == 'assistant' and loop.last and m.get('reasoning_content') %}"
             "<think>{{ m['reasoning_content'] }}</think>{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TOOLS = ("{% if tools %}<|system|>system: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}<|end|>{% endif %}"
         "{% for m in messages %}<|{{ m['role'] }}|>{% if m.get('tool_calls') %}question "
         "{{ m['tool_calls'][0]['function']['name'] }}{% endif %}{{ m['content'] }}<|end|>{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def chatml_tokenizer(template=CHATML):
    """SmolLM2's arrangement: pad = eos = <|im_end|>, the end-of-turn marker."""
    tok = make_tokenizer(with_chat_template=False)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.chat_template = template
    return tok


def marked(record, tok=TOK, fmt="auto", **cfg):
    pairs = render_example(record, fmt, tok, DataConfig(seq_len=128, **cfg), task="causal-lm")
    return [t.strip() for t, _ in pairs], [t.strip() for t, m in pairs if m]


ALPACA = {"instruction": "one two", "input": "three", "output": "yes no"}


# -- 2. instruction rows through the chat template -----------------------------------------------------------
def test_alpaca_rows_go_through_the_chat_template_when_the_tokenizer_has_one():
    words, trained = marked(ALPACA)
    assert words == ["<|user|>", "one", "two", "three", "<|end|>", "<|assistant|>", "yes", "no", "<|end|>"]
    assert trained == ["yes", "no", "<|end|>"]                 # the answer and its end of turn, nothing else
    assert "is" not in words                                  # not the Stanford Alpaca text prompt


def test_prompt_completion_rows_go_through_the_chat_template():
    words, trained = marked({"prompt": "the cat is", "completion": "good"})
    assert words[:4] == ["<|user|>", "the", "cat", "is"] and trained == ["good", "<|end|>"]


def test_without_a_template_or_asked_for_text_the_alpaca_prompt_is_used():
    for words, trained in (marked(ALPACA, TOK_NT), marked(ALPACA, TOK, instruction_format="text")):
        assert words[:3] == ["<unk>", "is", "an"] and trained == ["yes", "no", "</s>"]  # "Below is an ..."


def test_chat_template_asked_for_without_one_uses_the_fallback_template():
    words, trained = marked(ALPACA, TOK_NT, instruction_format="chat-template")
    assert words[:2] == ["<|user|>", "one"] and "is" not in words and trained == ["yes", "no", "</s>"]


def test_check_data_says_how_instruction_rows_are_rendered(tiny_llama, tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("".join(json.dumps(ALPACA) + "\n" for _ in range(5)))
    assert check_data(DataConfig(dataset=str(p)), str(tiny_llama)).rendering == "chat template"
    assert check_data(DataConfig(dataset=str(p), instruction_format="text"), str(tiny_llama)).rendering == \
        "text (Alpaca prompt)"


# -- 3. the end-of-turn token is always trained ---------------------------------------------------------------
def test_end_of_turn_is_trained_when_it_is_also_pad_and_eos():
    from ftstudio.engine.data.render import end_of_turn

    tok = chatml_tokenizer()
    assert end_of_turn(tok) == "<|im_end|>"
    chat = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"},
                         {"role": "user", "content": "and"}, {"role": "assistant", "content": "no"}]}
    _, trained = marked(chat, tok)
    assert trained == ["yes", "<|im_end|>", "no", "<|im_end|>"]
    _, trained = marked(ALPACA, tok)
    assert trained == ["yes", "no", "<|im_end|>"]


def test_end_of_turn_is_trained_when_the_template_rewrites_history():
    tok = chatml_tokenizer(REASONING)
    chat = {"messages": [{"role": "user", "content": "hello"},
                         {"role": "assistant", "content": "yes", "reasoning_content": "one"},
                         {"role": "user", "content": "and"},
                         {"role": "assistant", "content": "no", "reasoning_content": "two"}]}
    words, trained = marked(chat, tok)
    assert "one" not in words and "two" in words              # the template dropped the first turn's reasoning
    assert trained[:2] == ["yes", "<|im_end|>"]               # ... and the first turn still learns to stop
    assert trained[-2:] == ["no", "<|im_end|>"]


def test_eos_appended_by_the_tokenizer_itself_is_trained():
    from tokenizers import processors

    tok = make_tokenizer(with_chat_template=False)
    eos = tok.eos_token_id
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    words, trained = marked({"prompt": "the cat is", "completion": " good"}, tok)
    assert words[-1] == "</s>" and words.count("</s>") == 1 and trained == ["good", "</s>"]


# -- 5. chat data as users write it ---------------------------------------------------------------------------
def test_weight_zero_turns_are_rendered_but_not_trained():
    chat = {"messages": [{"role": "user", "content": "hello"},
                         {"role": "assistant", "content": "bad answer", "weight": 0},
                         {"role": "user", "content": "again"},
                         {"role": "assistant", "content": "good", "weight": 1}]}
    words, trained = marked(chat)
    assert "bad" in words and trained == ["good", "<|end|>"]


def test_tools_tool_calls_and_the_tool_role_reach_the_template():
    tok = make_tokenizer(with_chat_template=False)
    tok.chat_template = TOOLS
    call = [{"type": "function", "function": {"name": "dog", "arguments": "{}"}}]
    chat = {"tools": [{"type": "function", "function": {"name": "dog", "parameters": {}}}],
            "messages": [{"role": "user", "content": "hello"},
                         {"role": "assistant", "content": "", "tool_calls": call},
                         {"role": "tool", "content": "yes", "tool_call_id": "1"},
                         {"role": "assistant", "content": "good"}]}
    words, trained = marked(chat, tok)
    assert words[:4] == ["<|system|>", "system", ":", "dog"]     # top-level tools given to the template
    assert trained == ["question", "dog", "<|end|>", "good", "<|end|>"]


def test_content_as_a_list_of_text_parts():
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text",
                                                                                          "text": "world"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]}
    words, trained = marked(chat)
    assert words[:3] == ["<|user|>", "hello", "world"] and trained == ["yes", "<|end|>"]


def test_an_image_part_is_refused_by_name():
    chat = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                         {"role": "assistant", "content": "yes"}]}
    with pytest.raises(DataError, match="image_url"):
        marked(chat)


def test_an_unused_message_field_is_a_warning_naming_it(tmp_path):
    p = tmp_path / "c.jsonl"
    row = {"messages": [{"role": "user", "content": "hello", "timestamp": 3},
                        {"role": "assistant", "content": "yes"}]}
    p.write_text((json.dumps(row) + "\n") * 3)
    report = check_data(DataConfig(dataset=str(p), val_fraction=0.0))
    assert report.ok and report.train_rows == 3
    warnings = [w for w in report.problems if w.severity == "warning"]
    assert warnings and all("timestamp" in str(w) for w in warnings)


# -- 6. check-data --show: the headless twin of the GUI preview -------------------------------------------------
def test_check_data_show_prints_rows_as_the_model_sees_them(tiny_llama, tmp_path, capsys):
    from ftstudio.cli import main

    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps(ALPACA) + "\n" + json.dumps({"instruction": "the cat", "output": "good"}) + "\n")
    assert main(["check-data", str(p), "--model", str(tiny_llama), "--show", "2", "--val-fraction", "0",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["row"] for r in report["preview"]] == [1, 2]
    first = report["preview"][0]
    assert first["text"].split() == ["<|user|>", "one", "two", "three", "<|end|>", "<|assistant|>", "yes", "no",
                                     "<|end|>"]
    assert first["trained"].split() == ["yes", "no", "<|end|>"] and report["rendering"] == "chat template"
    assert main(["check-data", str(p), "--model", str(tiny_llama), "--show", "1", "--val-fraction", "0"]) == 0
    out = capsys.readouterr().out
    assert "--- row 1" in out and "[trained]" in out and "--- row 2" not in out
