"""Issue 30: the trained span of each assistant turn comes from the template's own rendering, for every template
family: its content, tool calls, reasoning where the template renders it, and its end-of-turn marker; never the
user's words, however the template re-renders earlier turns. Golden texts written out by hand, position by
position: ``(text, trained)`` pieces whose concatenation is the rendering and whose trained pieces are the spans."""
from __future__ import annotations

from pathlib import Path

import pytest

from ftstudio.engine.data.masks import TurnNotes
from ftstudio.engine.data.render import TemplateError, encode_causal, render_chat
from tiny import make_tokenizer

TEMPLATES = Path(__file__).parent / "data" / "templates"
FAMILIES = {   # bos, eos, special tokens (as the models' tokenizers mark them)
    "chatml": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "llama3": ("<|begin_of_text|>", "<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>",
                                                  "<|end_header_id|>", "<|eot_id|>"]),
    "gemma": ("<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]),
    "mistral": ("<s>", "</s>", ["[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]),
    "phi3": ("<s>", "<|endoftext|>", ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
    "qwen2_5": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "qwen3": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "deepseek_r1": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                    ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                     "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
                     "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
                     "<｜tool▁output▁end｜>"]),
}


def family_tokenizer(name):
    bos, eos, specials = FAMILIES[name]
    tok = make_tokenizer(with_chat_template=False)
    tok.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")
    return tok


SYS = {"role": "system", "content": "Be brief."}
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Say hi again"}, {"role": "assistant", "content": "Hi again."}]
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "22 C"}, {"role": "assistant", "content": "It is 22 C in Paris."}]


def check(name, messages, pieces):
    """The rendering is the pieces joined, and the trained spans are exactly the pieces marked 1."""
    notes = []
    text, spans = render_chat(family_tokenizer(name), messages, notes=notes)
    assert text == "".join(p for p, _ in pieces)
    want, at = [], 0
    for piece, trained in pieces:
        if trained:
            want.append((at, at + len(piece)))
        at += len(piece)
    assert [text[a:b] for a, b in spans] == [p for p, t in pieces if t]
    assert spans == want
    return notes[0]


# -- multi-turn with a system message ------------------------------------------------------------------------
def test_chatml():
    check("chatml", [SYS] + CHAT, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", 0),
        ("Hello! How can I help?<|im_end|>", 1),
        ("\n<|im_start|>user\nSay hi again<|im_end|>\n<|im_start|>assistant\n", 0), ("Hi again.<|im_end|>", 1),
        ("\n", 0)])


def test_llama3():
    h = "<|start_header_id|>{}<|end_header_id|>\n\n"
    check("llama3", [SYS] + CHAT, [
        ("<|begin_of_text|>" + h.format("system") + "Be brief.<|eot_id|>" + h.format("user") + "Hi there<|eot_id|>"
         + h.format("assistant"), 0),
        ("Hello! How can I help?<|eot_id|>", 1),
        (h.format("user") + "Say hi again<|eot_id|>" + h.format("assistant"), 0), ("Hi again.<|eot_id|>", 1)])


def test_gemma_and_its_refusal_of_a_system_turn():
    check("gemma", CHAT, [
        ("<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n", 0),
        ("Hello! How can I help?<end_of_turn>", 1),
        ("\n<start_of_turn>user\nSay hi again<end_of_turn>\n<start_of_turn>model\n", 0),
        ("Hi again.<end_of_turn>", 1), ("\n", 0)])
    with pytest.raises(TemplateError, match="System role not supported"):
        render_chat(family_tokenizer("gemma"), [SYS] + CHAT)


def test_mistral():
    # v0.3 renders the system message inside the last user turn only: here, nowhere (the chat ends with an answer)
    check("mistral", [SYS] + CHAT, [
        ("<s>[INST] Hi there[/INST] ", 0), ("Hello! How can I help?</s>", 1),
        ("[INST] Say hi again[/INST] ", 0), ("Hi again.</s>", 1)])
    check("mistral", CHAT, [
        ("<s>[INST] Hi there[/INST]", 0), (" Hello! How can I help?</s>", 1),
        ("[INST] Say hi again[/INST]", 0), (" Hi again.</s>", 1)])


def test_phi3():
    check("phi3", [SYS] + CHAT, [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\n", 0),
        ("Hello! How can I help?<|end|>", 1),
        ("\n<|user|>\nSay hi again<|end|>\n<|assistant|>\n", 0), ("Hi again.<|end|>", 1),
        ("\n<|endoftext|>", 0)])


def test_qwen2_5():
    check("qwen2_5", [SYS] + CHAT, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", 0),
        ("Hello! How can I help?<|im_end|>", 1),
        ("\n<|im_start|>user\nSay hi again<|im_end|>\n<|im_start|>assistant\n", 0), ("Hi again.<|im_end|>", 1),
        ("\n", 0)])


def test_qwen3_without_reasoning_trains_the_empty_think_block_it_renders():
    check("qwen3", [SYS] + CHAT, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", 0),
        ("Hello! How can I help?<|im_end|>", 1),
        ("\n<|im_start|>user\nSay hi again<|im_end|>\n<|im_start|>assistant\n", 0),
        ("<think>\n\n</think>\n\nHi again.<|im_end|>", 1), ("\n", 0)])


def test_deepseek_r1():
    check("deepseek_r1", [SYS] + CHAT, [
        ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi there<｜Assistant｜>", 0),
        ("Hello! How can I help?<｜end▁of▁sentence｜>", 1),
        ("<｜User｜>Say hi again<｜Assistant｜>", 0), ("Hi again.<｜end▁of▁sentence｜>", 1)])


# -- Qwen3 re-renders earlier turns: the mask stays on the assistant's tokens -------------------------------------
def test_qwen3_with_reasoning_drops_earlier_reasoning_and_never_trains_the_users_words():
    chat = [{"role": "user", "content": "Say yes"},
            {"role": "assistant", "content": "yes", "reasoning_content": "They want yes."},
            {"role": "user", "content": "Say yes again"},
            {"role": "assistant", "content": "yes", "reasoning_content": "Again yes."}]
    notes = check("qwen3", chat, [
        ("<|im_start|>user\nSay yes<|im_end|>\n<|im_start|>assistant\n", 0), ("yes<|im_end|>", 1),
        ("\n<|im_start|>user\nSay yes again<|im_end|>\n<|im_start|>assistant\n", 0),
        ("<think>\nAgain yes.\n</think>\n\nyes<|im_end|>", 1), ("\n", 0)])
    assert notes.reasoning_dropped == [2] and notes.dropped == []      # said and counted, not silently


def test_qwen3_multi_turn_with_tool_calls_trains_the_calls_and_their_ends_of_turn():
    chat = TOOL + [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome."}]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    check("qwen3", chat, [
        ("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n", 0), (call + "<|im_end|>", 1),
        ("\n<|im_start|>user\n<tool_response>\n22 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n", 0),
        ("It is 22 C in Paris.<|im_end|>", 1),
        ("\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n", 0),
        ("<think>\n\n</think>\n\nYou are welcome.<|im_end|>", 1), ("\n", 0)])


def test_qwen2_5_tool_call_with_empty_content():
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    check("qwen2_5", TOOL, [
        ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
         "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n", 0), (call + "<|im_end|>", 1),
        ("\n<|im_start|>user\n<tool_response>\n22 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n", 0),
        ("It is 22 C in Paris.<|im_end|>", 1), ("\n", 0)])


def test_mistral_tool_call():
    call = dict(CALL, id="abc123def")
    chat = [TOOL[0], dict(TOOL[1], tool_calls=[call]), dict(TOOL[2], tool_call_id="abc123def"), TOOL[3]]
    check("mistral", chat, [
        ("<s>[INST] Weather in Paris?[/INST]", 0),
        ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123def"}]</s>', 1),
        ('[TOOL_RESULTS] {"content": 22 C, "call_id": "abc123def"}[/TOOL_RESULTS]', 0),
        (" It is 22 C in Paris.</s>", 1)])


def test_deepseek_tool_call_and_reasoning_it_does_not_render():
    call = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    chat = [TOOL[0], dict(TOOL[1], tool_calls=[call]), TOOL[2],
            dict(TOOL[3], reasoning_content="The tool said 22 C.")]
    notes = check("deepseek_r1", chat, [
        ("<｜begin▁of▁sentence｜><｜User｜>Weather in Paris?<｜Assistant｜>", 0),
        ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
         '{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>', 1),
        ("<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>22 C<｜tool▁output▁end｜><｜tool▁outputs▁end｜>", 0),
        ("It is 22 C in Paris.<｜end▁of▁sentence｜>", 1)])
    assert notes.reasoning_dropped == [4]


# -- weight 0, dropped turns, generation blocks, tokens ----------------------------------------------------------
def test_weight_zero_turn_is_rendered_not_trained_and_the_next_one_keeps_its_span():
    chat = [CHAT[0], dict(CHAT[1], weight=0), CHAT[2], CHAT[3]]
    check("llama3", chat, [
        ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>"
         "assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|><|start_header_id|>user<|end_header_id|>"
         "\n\nSay hi again<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", 0),
        ("Hi again.<|eot_id|>", 1)])


def test_a_turn_the_template_drops_is_counted_and_trains_nothing():
    tok = family_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}{% if not (m['role'] == 'assistant' and not loop.last) %}"
                         "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    notes = []
    text, spans = render_chat(tok, CHAT, notes=notes)
    assert "Hello!" not in text and [text[a:b] for a, b in spans] == ["Hi again.<|im_end|>"]
    assert notes[0].dropped == [2]


def test_generation_blocks_are_the_templates_own_mask():
    tok = family_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
                         "{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}{% else %}"
                         "{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}")
    notes = []
    text, spans = render_chat(tok, [CHAT[0], dict(CHAT[1], weight=0), CHAT[2], CHAT[3]], notes=notes)
    assert [text[a:b] for a, b in spans] == ["Hi again.<|im_end|>"] and notes[0].method == "generation blocks"


def test_tokens_under_the_loss_for_a_qwen3_tool_chat():
    """Through a byte-level BPE tokenizer (as Qwen's): the tokens under the loss spell the golden spans."""
    from tiny import make_bpe_tokenizer

    tok = make_bpe_tokenizer(chat_template=(TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8"))
    chat = TOOL + [{"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome."}]
    text, spans = render_chat(tok, chat)
    enc = encode_causal({"messages": chat}, tok, seq_len=1024)
    assert tok.decode(enc.input_ids) == text
    runs, run = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != -100:
            run.append(t)
        elif run:
            runs, run = runs + [tok.decode(run)], []
    runs += [tok.decode(run)] if run else []
    assert runs == [text[a:b] for a, b in spans]
    assert runs[0].startswith("<tool_call>") and runs[-1] == "<think>\n\n</think>\n\nYou are welcome.<|im_end|>"


def test_check_data_counts_and_says_turns_whose_reasoning_the_template_drops(tmp_path):
    import json

    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import check_data

    chat = {"messages": [{"role": "user", "content": "Say yes"},
                         {"role": "assistant", "content": "yes", "reasoning_content": "They want yes."},
                         {"role": "user", "content": "Say yes again"},
                         {"role": "assistant", "content": "yes", "reasoning_content": "Again yes."}]}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(chat) for _ in range(5)) + "\n", encoding="utf-8")
    report = check_data(DataConfig(dataset=str(path), val_fraction=0.0, seq_len=256), family_tokenizer("qwen3"))
    said = [p.reason for p in report.problems if "reasoning" in p.reason]
    assert report.ok and len(said) == 1
    assert said[0].startswith("the chat template does not render the reasoning of 5 assistant turns (row 1 turn 2")


@pytest.mark.parametrize("family", ["chatml", "llama3", "gemma", "mistral", "phi3", "qwen2_5", "qwen3"])
def test_the_prompt_trained_on_is_the_prompt_compare_generates_from(family, tmp_path):
    """A prompt/completion row is trained as [user, assistant] through the template; everything before its
    trained span is the prompt, and Compare's generation (gui/compare_jobs.encode_prompt) and the exported
    tokenizer's own template write the same string for the same user turn."""
    from transformers import AutoTokenizer

    from ftstudio.gui.compare_jobs import encode_prompt

    tok = family_tokenizer(family)
    text, spans = render_chat(tok, [{"role": "user", "content": "Hi there"},
                                    {"role": "assistant", "content": "Hello!"}])
    trained_prompt = text[:spans[0][0]]
    _, compare_prompt = encode_prompt(tok, "Hi there", tok.chat_template)
    tok.save_pretrained(tmp_path)   # what the export writes beside the weights (export.save_final)
    again = AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(
        [{"role": "user", "content": "Hi there"}], add_generation_prompt=True, tokenize=False)
    assert trained_prompt == compare_prompt == again


def test_deepseek_r1_prompts_with_think_but_renders_answers_without_it():
    """The one family whose training text cannot hold the inference prompt: its template adds ``<think>\\n`` to
    the generation prompt and strips reasoning from rendered answers. Said here, measured, not hidden."""
    from ftstudio.gui.compare_jobs import encode_prompt

    tok = family_tokenizer("deepseek_r1")
    text, spans = render_chat(tok, [{"role": "user", "content": "Hi there"},
                                    {"role": "assistant", "content": "Hello!"}])
    _, compare_prompt = encode_prompt(tok, "Hi there", tok.chat_template)
    assert text[:spans[0][0]] + "<think>\n" == compare_prompt


def test_an_assistant_turn_first_is_masked_from_its_payload():
    tok = family_tokenizer("gemma")    # its template cannot render an empty conversation (messages[0] undefined)
    tok.chat_template = tok.chat_template.replace("{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                                                  "{{ raise_exception('Conversation roles must alternate user/"
                                                  "assistant/user/assistant/...') }}{% endif %}", "")
    text, spans = render_chat(tok, [{"role": "assistant", "content": "Welcome!"}, CHAT[0], CHAT[1]])
    assert [text[a:b] for a, b in spans] == ["Welcome!<end_of_turn>", "Hello! How can I help?<end_of_turn>"]
