"""Normal-form rows → token ids with a loss mask (chat templates, loss spans).

The loss mask is computed on characters, then mapped to tokens: each row is rendered to one string with
spans (character ranges) whose tokens are trained — the completion, or each assistant turn of a chat. The
string is tokenised once, and a token is under the loss when its last character falls inside a span (so a
BPE token " yes" that starts with the prompt's trailing space still counts as completion). Tokenising the
whole string once, rather than prompt and completion separately, gives exactly the ids the model will see
at inference. ``labels[i]`` is -100 wherever token i is not predicted by the loss, which includes the very
first token (no position predicts it), so counting ``labels != -100`` counts the tokens really trained.
"""
from __future__ import annotations

from dataclasses import dataclass

from ftstudio.engine.data import masks
from ftstudio.engine.data.masks import TemplateError, TemplateTimeout  # noqa: F401 - the data package's names

IGNORE = -100

# Used when the tokenizer has no chat template of its own. Role headers are plain text (no new tokens, so the
# embedding matrix keeps its size); each turn ends with the EOS token, so the model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # tokens before truncation
    notes: object = None  # masks.TurnNotes of a chat: turns the template dropped or rendered without reasoning

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def chat_template(tokenizer) -> str:
    return getattr(tokenizer, "chat_template", None) or FALLBACK_CHAT_TEMPLATE


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer, instruction_format: str) -> bool:
    """Whether alpaca and prompt/completion rows go through the chat template (``data.instruction_format``)."""
    if instruction_format == "auto":
        return has_chat_template(tokenizer)
    return instruction_format == "chat-template"


# What a message may carry into the template: the OpenAI fields templates read. ``weight`` is ours (not the
# template's): 0 keeps an assistant turn out of the loss.
TEMPLATE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content")


def _render(tokenizer, messages, gen: bool, tools=None) -> str:
    msgs = [{k: m[k] for k in TEMPLATE_KEYS if k in m} for m in messages]
    kw = {"tools": tools} if tools else {}
    from ftstudio.engine.data.time_limit import TimeLimitExceeded, template_seconds, time_limit
    try:
        with time_limit(template_seconds(), "rendering the chat template"):  # a runaway loop is an error, not a hang
            out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                                chat_template=chat_template(tokenizer), **kw)
    except TimeLimitExceeded:
        raise TemplateTimeout(f"the chat template took longer than {template_seconds():g} s to render this row "
                              "(loops that never end?); fix the template, or set FTSTUDIO_TEMPLATE_TIME_LIMIT to "
                              "more seconds") from None
    except Exception as e:  # jinja's raise_exception and template bugs alike
        raise TemplateError(f"the chat template refused this conversation: {str(e).splitlines()[0][:200]}") from e
    return out if isinstance(out, str) else out[0]


def end_of_turn(tokenizer) -> str:
    """The end-of-turn marker the chat template writes right after an assistant turn's content (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``, the fallback's EOS), found by rendering a probe conversation:
    the first special token after the content (:func:`masks.end_marker`); "" when there is none."""
    key = (id(tokenizer), chat_template(tokenizer), str(getattr(tokenizer, "eos_token", None)))
    if key not in _EOT:
        if len(_EOT) > 16:
            _EOT.clear()
        _EOT[key] = _end_of_turn(tokenizer)
    return _EOT[key]


_EOT: dict = {}   # (tokenizer, template) → its end-of-turn marker: one probe per dataset, not one per row


def _end_of_turn(tokenizer) -> str:
    probe = [{"role": "user", "content": "Zq"}, {"role": "assistant", "content": "Xj"}]
    try:
        text = _render(tokenizer, probe, gen=False)
    except TemplateTimeout:
        raise
    except TemplateError:
        return ""
    i = text.rfind("Xj")
    return masks.end_marker(tokenizer, text[i + 2:].lstrip()) if i >= 0 else ""


def _render_marked(tokenizer, messages, tools=None):
    """(text, generation-block character ranges): transformers' own renderer, as ``return_assistant_tokens_mask``
    runs it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from ftstudio.engine.data.time_limit import TimeLimitExceeded, template_seconds, time_limit

    msgs = [{k: m[k] for k in TEMPLATE_KEYS if k in m} for m in messages]
    try:
        with time_limit(template_seconds(), "rendering the chat template"):
            texts, blocks = render_jinja_template([msgs], tools=tools or None, chat_template=chat_template(tokenizer),
                                                  return_assistant_tokens_mask=True, add_generation_prompt=False,
                                                  **tokenizer.special_tokens_map)
    except TimeLimitExceeded:
        raise TemplateTimeout(f"the chat template took longer than {template_seconds():g} s to render this row "
                              "(loops that never end?); fix the template, or set FTSTUDIO_TEMPLATE_TIME_LIMIT to "
                              "more seconds") from None
    except Exception as e:  # noqa: BLE001 - jinja's raise_exception and template bugs alike
        raise TemplateError(f"the chat template refused this conversation: {str(e).splitlines()[0][:200]}") from e
    return texts[0], blocks[0]


def render_chat(tokenizer, messages: list[dict], tools=None, notes: list | None = None
                ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character spans of the trained assistant turns (a turn with ``weight: 0`` is
    rendered but not trained), each from the template's own rendering (``masks.py``): its ``{% generation %}``
    blocks where it has them, else differential rendering of the whole conversation, the span running from
    the end of the generation prompt through the end-of-turn marker. ``notes``: a list that receives the
    :class:`masks.TurnNotes` (turns the template dropped, reasoning it did not render)."""
    if masks.GENERATION_BLOCK.search(chat_template(tokenizer)):
        text, spans = masks.generation_spans(lambda msgs: _render_marked(tokenizer, msgs, tools), messages)
        if spans is not None:
            if notes is not None:
                notes.append(masks.TurnNotes(method="generation blocks"))
            return text, spans
    text, spans, said = masks.differential_spans(
        lambda msgs, gen: _render(tokenizer, msgs, gen=gen, tools=tools), tokenizer, messages, end_of_turn(tokenizer))
    if notes is not None:
        notes.append(said)
    return text, spans


def _in_spans(end: int, spans) -> bool:
    return any(s < end <= e for s, e in spans)


def encode_spans(tokenizer, text: str, spans, *, add_special: bool, add_eos: bool, seq_len: int) -> Encoded:
    """Tokenise ``text``; tokens whose last character lies in a span get their id as label, others -100."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True,
                        return_special_tokens_mask=True, verbose=False)
        ids = list(enc["input_ids"])
        special = enc["special_tokens_mask"] if add_special else [0] * len(ids)
        keep = [not sp and _in_spans(e, spans) and e > s for (s, e), sp in zip(enc["offset_mapping"], special)]
    else:  # slow tokenizers have no offsets: tokenise the pieces between span borders separately
        ids, keep = [], []
        cuts = sorted({0, len(text), *[b for sp in spans for b in sp]})
        for a, b in zip(cuts, cuts[1:]):
            piece = tokenizer(text[a:b], add_special_tokens=False, verbose=False)["input_ids"]
            ids += piece
            keep += [_in_spans(b, spans)] * len(piece)
        if add_special and getattr(tokenizer, "bos_token_id", None) is not None and \
                getattr(tokenizer, "add_bos_token", False):
            ids, keep = [tokenizer.bos_token_id] + ids, [False] + keep
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is not None:
        if ids and ids[-1] == eos:
            keep[-1] = True  # a tokenizer that appends EOS itself marks it special: it is still the stop to learn
        else:
            ids, keep = ids + [eos], keep + [True]  # the model learns to stop after a completion
    labels = [t if k else IGNORE for t, k in zip(ids, keep)]
    if labels:
        labels[0] = IGNORE  # no position predicts the first token
    full = len(ids)
    return Encoded(ids[:seq_len], labels[:seq_len], full)


def encode_causal(norm: dict, tokenizer, seq_len: int, instruction_format: str = "auto") -> Encoded:
    """One normal-form row (text / prompt-completion / messages) for a causal LM. Instruction rows (alpaca,
    prompt/completion) become a user and an assistant turn of the chat template when ``instruction_format``
    says so (:func:`uses_chat_template`), else plain text ending with EOS."""
    if "completion" in norm and "messages" not in norm and uses_chat_template(tokenizer, instruction_format):
        norm = {"messages": [{"role": "user", "content": norm.get("user", norm["prompt"])},
                             {"role": "assistant", "content": norm["completion"]}]}
    if "messages" in norm:
        notes: list = []
        text, spans = render_chat(tokenizer, norm["messages"], tools=norm.get("tools"), notes=notes)
        # The template writes BOS itself when the model wants one; adding special tokens would double it.
        enc = encode_spans(tokenizer, text, spans, add_special=False, add_eos=False, seq_len=seq_len)
        enc.notes = notes[0] if notes else None
        return enc
    if "completion" in norm:
        text = norm["prompt"] + norm["completion"]
        return encode_spans(tokenizer, text, [(len(norm["prompt"]), len(text))], add_special=True,
                            add_eos=True, seq_len=seq_len)
    return encode_spans(tokenizer, norm["text"], [(0, len(norm["text"]))], add_special=True, add_eos=True,
                        seq_len=seq_len)


def encode_classification_batch(texts: list[str], tokenizer, seq_len: int) -> list[Encoded]:
    """Texts for a sequence classifier (labels are set by the caller; every token feeds the prediction)."""
    full = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    cut = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
    return [Encoded(list(c), [], len(f)) for c, f in zip(cut, full)]
