"""Format detection and the loss mask, checked token by token with the word-level tiny tokenizer."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftstudio.core.config import DataConfig
from ftstudio.core.errors import DataError
from ftstudio.engine.data import detect_format, render_example
from ftstudio.engine.data.render import FALLBACK_CHAT_TEMPLATE
from tiny import WORDS, make_tokenizer

TOK = make_tokenizer()
TOK_NT = make_tokenizer(with_chat_template=False)
CFG = DataConfig(seq_len=128, instruction_format="text")  # instruction rows as text here; chat-template: test_chat_render.py
T, F = True, False


def mask(record, fmt="auto", tok=TOK, cfg=CFG, task=None):
    return [(t.strip(), m) for t, m in render_example(record, fmt, tok, cfg, task=task)]


# --- the mask, token by token, for every format ----------------------------------------------------------

def test_mask_text_trains_every_token_but_the_first():
    assert mask({"text": "the cat is good"}) == [("the", F), ("cat", T), ("is", T), ("good", T), ("</s>", T)]


def test_mask_prompt_completion_trains_completion_and_eos_only():
    assert mask({"prompt": "the cat is", "completion": " good"}) == [
        ("the", F), ("cat", F), ("is", F), ("good", T), ("</s>", T)]


def test_mask_alpaca_trains_output_only():
    toks = mask({"instruction": "one two", "input": "three", "output": "yes no"})
    assert toks[-3:] == [("yes", T), ("no", T), ("</s>", T)]
    assert not any(m for _, m in toks[:-3])
    words = [t for t, _ in toks]
    assert words[words.index("one"):words.index("one") + 2] == ["one", "two"] and "three" in words


def test_public_column_names_read_as_their_format_with_the_same_mask():
    """prompt/response, question/answer (prompt-completion) and Dolly's instruction/context/response (alpaca)
    train exactly what the canonical names train."""
    canonical = mask({"prompt": "the cat is", "completion": " good"})
    for p, c in (("prompt", "response"), ("question", "answer"), ("query", "completion")):
        assert detect_format([{p: "x", c: "y"}], CFG) == "prompt-completion"
        assert mask({p: "the cat is", c: " good"}) == canonical
    alpaca = mask({"instruction": "one two", "input": "three", "output": "yes no"})
    assert detect_format([{"instruction": "a", "context": "b", "response": "c"}], CFG) == "alpaca"
    assert mask({"instruction": "one two", "context": "three", "response": "yes no"}) == alpaca


def test_mask_alpaca_without_input_drops_the_input_section():
    with_input = [t for t, _ in mask({"instruction": "one", "input": "two", "output": "yes"})]
    without = [t for t, _ in mask({"instruction": "one", "output": "yes"})]
    assert "two" in with_input and "two" not in without and len(without) < len(with_input)


def test_mask_chat_with_the_tokenizer_template():
    rec = {"messages": [{"role": "system", "content": "be good"}, {"role": "user", "content": "hello world"},
                        {"role": "assistant", "content": "yes"}, {"role": "user", "content": "one"},
                        {"role": "assistant", "content": "two three"}]}
    assert mask(rec) == [
        ("<|system|>", F), ("be", F), ("good", F), ("<|end|>", F),
        ("<|user|>", F), ("hello", F), ("world", F), ("<|end|>", F),
        ("<|assistant|>", F), ("yes", T), ("<|end|>", T),
        ("<|user|>", F), ("one", F), ("<|end|>", F),
        ("<|assistant|>", F), ("two", T), ("three", T), ("<|end|>", T)]


def test_mask_chat_fallback_template_when_tokenizer_has_none():
    assert TOK_NT.chat_template is None
    rec = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes no"}]}
    assert mask(rec, tok=TOK_NT) == [("<|user|>", F), ("hello", F), ("</s>", F), ("<|assistant|>", F),
                                     ("yes", T), ("no", T), ("</s>", T)]
    assert "eos_token" in FALLBACK_CHAT_TEMPLATE


def test_mask_sharegpt_maps_speakers_to_roles():
    rec = {"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "yes"}]}
    assert mask(rec) == [("<|user|>", F), ("hello", F), ("<|end|>", F), ("<|assistant|>", F),
                         ("yes", T), ("<|end|>", T)]


def test_mask_classification_marks_only_the_label():
    assert mask({"text": "the contract", "label": "payment"}) == [("the", F), ("contract", F), ("→ payment", T)]


def test_truncation_to_seq_len():
    cfg = DataConfig(seq_len=8)
    toks = mask({"text": " ".join(["one"] * 20)}, cfg=cfg)
    assert len(toks) == 8 and toks[-1] == ("one", T)  # cut at the end: the EOS falls off


def test_format_override_and_columns():
    cfg = DataConfig(format="text", text_column="body")
    assert detect_format([{"body": "a", "label": "x"}], cfg) == "text"
    assert mask({"body": "the cat", "label": "x"}, "text", cfg=cfg)[1] == ("cat", T)
    cfg = DataConfig(text_column="body", label_column="kind")
    assert detect_format([{"body": "a", "kind": "x"}], cfg) == "classification"


def test_bad_preview_row_raises_data_error():
    with pytest.raises(DataError) as exc:
        render_example({"messages": [{"role": "user", "content": "hi"}]}, "auto", TOK, CFG)
    assert exc.value.field == "messages" and "no assistant turn" in exc.value.reason


# --- detection, property-based -----------------------------------------------------------------------------

RESERVED = {"messages", "conversations", "instruction", "output", "input", "prompt", "completion", "text",
            "content", "sentence", "document", "label", "labels", "class", "category"}
word = st.sampled_from(WORDS)
sentence = st.lists(word, min_size=1, max_size=6).map(" ".join)
extra_cols = st.dictionaries(st.text("xyzqk_", min_size=2, max_size=6).filter(lambda k: k not in RESERVED),
                             st.one_of(st.integers(), st.booleans()), max_size=3)


def _row(fmt: str, draw) -> dict:
    s = lambda: draw(sentence)  # noqa: E731
    if fmt == "text":
        return {"text": s()}
    if fmt == "prompt-completion":
        return {"prompt": s(), "completion": s()}
    if fmt == "alpaca":
        return {"instruction": s(), "input": s(), "output": s()}
    if fmt == "chat":
        return {"messages": [{"role": "user", "content": s()}, {"role": "assistant", "content": s()}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": s()}, {"from": "gpt", "value": s()}]}
    return {"text": s(), "label": draw(word)}


FORMATS = ["text", "prompt-completion", "alpaca", "chat", "sharegpt", "classification"]


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(FORMATS), n=st.integers(1, 6), data=st.data())
def test_detection_recovers_the_format_despite_extra_columns(fmt, n, data):
    rows = [{**_row(fmt, data.draw), **data.draw(extra_cols)} for _ in range(n)]
    assert detect_format(rows, DataConfig()) == fmt


@settings(max_examples=30, deadline=None)
@given(fmt=st.sampled_from(FORMATS), forced=st.sampled_from(FORMATS), data=st.data())
def test_explicit_format_always_wins(fmt, forced, data):
    assert detect_format([_row(fmt, data.draw)], DataConfig(format=forced)) == forced


# --- masking, property-based --------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=sentence, completion=sentence)
def test_prompt_completion_mask_is_exactly_the_completion(prompt, completion):
    toks = mask({"prompt": prompt, "completion": " " + completion})
    assert [t for t, m in toks if m] == completion.split() + ["</s>"]
    assert [t for t, m in toks if not m] == prompt.split()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=st.lists(st.tuples(sentence, sentence), min_size=1, max_size=4), system=st.booleans(),
       fallback=st.booleans())
def test_chat_mask_is_exactly_the_assistant_turns(turns, system, fallback):
    msgs = [{"role": "system", "content": "be good"}] if system else []
    for user, assistant in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    tok, end = (TOK_NT, "</s>") if fallback else (TOK, "<|end|>")
    toks = mask({"messages": msgs}, tok=tok)
    expected = [w for _, a in turns for w in a.split() + [end]]
    assert [t for t, m in toks if m] == expected
    assert not any(m for t, m in toks if t in ("<|user|>", "<|assistant|>", "<|system|>"))


class _NoOffsets:
    """A tokenizer without offset mappings (as slow tokenizers are): the piecewise path must agree."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, *a, **k):
        return self._tok(*a, **k)


@pytest.mark.parametrize("rec", [
    {"prompt": "the cat is", "completion": " good"},
    {"messages": [{"role": "user", "content": "hello world"}, {"role": "assistant", "content": "yes"},
                  {"role": "user", "content": "one"}, {"role": "assistant", "content": "two three"}]},
])
def test_tokenizers_without_offsets_give_the_same_mask(rec):
    assert mask(rec, tok=_NoOffsets(TOK)) == mask(rec)
