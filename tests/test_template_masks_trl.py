"""Issue 30: our template masks position by position against TRL's ``assistant_only_loss`` (its training templates
with ``{% generation %}`` blocks, tokenised by transformers' ``return_assistant_tokens_mask``), for each family
where TRL has a training template rendering the same tokens. Runs where TRL is installed (it is not a dependency:
``pip install --no-deps trl`` into a venv on top of the project's); skipped otherwise.

Llama-3's masks are identical. Elsewhere the conventions differ in documented ways, asserted exactly: TRL also
trains the newline after the end-of-turn token (Gemma, Qwen2.5) and parts of the generation prompt (Qwen2.5's
last newline, DeepSeek's ``<｜Assistant｜>``); we train what the model writes after the generation prompt, through
its end-of-turn token. Every token we train, TRL trains too. (Qwen3: TRL's training template renders other text,
the reasoning of every turn, so there is no position-by-position comparison; ChatML, Mistral, Phi-3: TRL has no
training template for these texts.)"""
from __future__ import annotations

import pytest

pytest.importorskip("trl")

from ftstudio.engine.data.render import encode_causal  # noqa: E402
from test_template_masks import CHAT, FAMILIES, SYS, TEMPLATES, TOOL  # noqa: E402
from tiny import make_bpe_tokenizer  # noqa: E402

# (family, conversation, the tokens TRL trains in each assistant turn beyond ours)
CASES = [("llama3", [SYS] + CHAT, []), ("llama3", CHAT, []),
         ("gemma", CHAT, ["\n"]),                          # the newline after <end_of_turn>
         ("qwen2_5", [SYS] + CHAT, ["\n", "\n"]),            # the generation prompt's last newline, the one after
         ("qwen2_5", TOOL, ["\n", "\n"]),                    # <|im_end|>
         ("deepseek_r1", [SYS] + CHAT, ["<｜Assistant｜>"])]  # the generation prompt's header


def _tokenizer(family):
    tok = make_bpe_tokenizer(chat_template=(TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8"))
    bos, eos, specials = FAMILIES[family]
    tok.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    return tok


@pytest.mark.parametrize("family, messages, trl_extra", CASES, ids=[f"{c[0]}-{len(c[1])}" for c in CASES])
def test_our_masks_against_trls_assistant_only_loss(family, messages, trl_extra):
    from trl.chat_template_utils import get_training_chat_template

    tok = _tokenizer(family)
    training = get_training_chat_template(tok)
    assert training is not None
    theirs = tok.apply_chat_template(messages, chat_template=training, return_dict=True, tokenize=True,
                                     return_assistant_tokens_mask=True)
    enc = encode_causal({"messages": messages}, tok, seq_len=4096)
    assert enc.input_ids == theirs["input_ids"]                      # the same tokens, position by position
    ours = [lab != -100 for lab in enc.labels]
    trl = [bool(m) for m in theirs["assistant_masks"]]
    assert all(t for o, t in zip(ours, trl) if o)                    # every token we train, TRL trains
    extra = [tok.decode([i]) for i, o, t in zip(enc.input_ids, ours, trl) if t and not o]
    turns = sum(1 for m in messages if m["role"] == "assistant")
    assert extra == trl_extra * turns
