"""The trained span of each assistant turn, from the chat template's own rendering, never from searching for
the answer's text (the same words may stand in a user turn, and templates rewrite turns).

Two ways, in this order:
1. ``{% generation %}`` blocks: the template marks what the model generates; transformers' renderer returns
   their character ranges (what ``return_assistant_tokens_mask`` and TRL's ``assistant_only_loss`` use).
2. Differential rendering, for every other template: the whole conversation is rendered twice, as it is and
   with assistant turn i's payload (content, reasoning, tool calls) replaced by a placeholder; the characters
   between the common prefix and the common suffix of the two renderings are the ones turn i's payload wrote,
   wherever the template put them and however it rewrote the rest. The span is then widened back to the end
   of the template's generation prompt (what the model sees before it starts to write: ``<think>`` the
   template adds after it is the model's to write) and forward over the end-of-turn marker (the model must
   learn to stop). Both renderings are of the whole conversation, so a template that renders earlier turns
   differently from the last (Qwen3 drops the reasoning of turns before the last user message) cannot move
   the mask.

A turn the template does not render at all (no character depends on it) is dropped: counted, never trained.
A turn whose reasoning the template does not render is trained without it, and counted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PLACEHOLDER = "\ue000"   # a private-use character: no template writes it, no tokenizer merges it with its context
PAYLOAD_KEYS = ("content", "reasoning_content", "tool_calls")
GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


class TemplateError(ValueError):
    """The chat template refused a conversation (e.g. roles that do not alternate), or cannot be masked."""


class TemplateTimeout(TemplateError):
    """The chat template ran past its time limit (data/time_limit.py): every row would, so reading stops. Never
    taken for a refusal of one rendering: the fallbacks below re-raise it."""


@dataclass
class TurnNotes:
    """What the template did to a conversation's assistant turns."""
    dropped: list[int] = field(default_factory=list)          # 1-based message numbers rendered nowhere
    reasoning_dropped: list[int] = field(default_factory=list)  # rendered without their reasoning
    method: str = "differential"                               # or "generation blocks"


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, limit: int) -> int:
    i = 0
    while i < limit and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


def _special_tokens(tokenizer) -> list[str]:
    names = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            names.add(str(tok))
    return sorted((n for n in names if n), key=len, reverse=True)


def end_marker(tokenizer, rest: str) -> str:
    """The end-of-turn marker at the start of ``rest`` (what the template writes right after an assistant turn's
    payload): the first special token there (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>``,
    ``</s>``), else the text up to the first whitespace (a marker the tokenizer does not know as special)."""
    for name in _special_tokens(tokenizer):
        if rest.startswith(name):
            return name
    return rest.split(None, 1)[0] if rest.strip() else ""


def generation_spans(render_marked, messages: list[dict]) -> tuple[str, list[tuple[int, int]] | None]:
    """(text, spans) from ``{% generation %}`` blocks, one per trained assistant turn; spans None where the blocks
    do not pair with the assistant turns one to one (then weight 0 cannot be honoured: the caller falls back)."""
    text, blocks = render_marked(messages)
    turns = [m for m in messages if m["role"] == "assistant"]
    if len(blocks) != len(turns):
        return text, None
    return text, [tuple(b) for b, m in zip(blocks, turns) if m.get("weight", 1) != 0]


def differential_spans(render, tokenizer, messages: list[dict], eot: str) -> tuple[str, list, TurnNotes]:
    """(text, spans, notes) by differential rendering (module docstring). ``render(messages, gen)`` renders;
    ``eot``: the end-of-turn marker (``render.end_of_turn``), trained where it follows a turn."""
    text = render(messages, False)
    notes, spans, cursor = TurnNotes(), [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        other, removed = _stand_in_rendering(render, messages, i)
        if removed:   # the turn's rendering, cut out: its ends may match the text beside it, so the suffix first
            q = len(text) - _common_suffix(text, other, min(len(text), len(other)))
            p = min(_common_prefix(text[:q], other[:len(other) - (len(text) - q)]), q)
        else:         # the placeholder matches nothing: the prefix and suffix end where the payload does
            p = _common_prefix(text, other)
            q = len(text) - _common_suffix(text, other, min(len(text), len(other)) - p)
        if p >= q:
            notes.dropped.append(i + 1)     # no character of the rendering depends on this turn
            continue
        if p < cursor:
            raise TemplateError(f"the chat template renders assistant turn {i + 1} into the text of an earlier "
                                "turn; cannot mask it")
        start = _turn_start(render, messages[:i], text, cursor, p)
        rest = text[q:]
        if eot and rest.lstrip().startswith(eot):
            q += len(rest) - len(rest.lstrip()) + len(eot)
        if (m.get("reasoning_content") or "").strip():
            without = render(messages[:i] + [{k: v for k, v in m.items() if k != "reasoning_content"}]
                             + messages[i + 1:], False)
            if without == text:
                notes.reasoning_dropped.append(i + 1)
        cursor = q
        if m.get("weight", 1) != 0:
            spans.append((start, q))
    return text, spans, notes


def _stand_in_rendering(render, messages: list[dict], i: int) -> tuple[str, bool]:
    """(the conversation rendered with assistant turn i's payload replaced by the placeholder, False). A template
    that refuses that (Mistral checks that roles alternate, skipping tool-call turns): (rendered without turn i,
    True)."""
    m = messages[i]
    stand_in = {k: v for k, v in m.items() if k not in PAYLOAD_KEYS} | {"content": PLACEHOLDER}
    try:
        return render(messages[:i] + [stand_in] + messages[i + 1:], False), False
    except TemplateTimeout:
        raise
    except TemplateError:
        return render(messages[:i] + messages[i + 1:], False), True


def _turn_start(render, before: list[dict], text: str, lo: int, payload: int) -> int:
    """Where the model starts to write turn i. With a generation prompt (the rendering of the turns before it
    with ``add_generation_prompt``, less their rendering without): its end, found nearest before the payload; a
    template whose prompt is not in the text as written (DeepSeek-R1 prompts ``<think>`` and renders past turns
    without it) gets the longest start of it that is, half of it at least. Without one (Mistral: the model
    writes on after ``[/INST]``): the end of the turns before it, where the text begins with them."""
    try:
        with_prompt = render(before, True)
        if text.startswith(with_prompt) and lo <= len(with_prompt) <= payload:
            return len(with_prompt)  # the usual case: the text goes on from the prompt (one rendering, not two)
        without = render(before, False)
    except TemplateTimeout:
        raise
    except TemplateError:            # a template that renders no conversation this short (an assistant first)
        return payload
    prompt = with_prompt[_common_prefix(with_prompt, without):]
    if not prompt:
        return len(without) if text.startswith(without) and lo <= len(without) <= payload else payload
    for k in range(len(prompt), (len(prompt) + 1) // 2 - 1, -1):
        at = text.rfind(prompt[:k], lo, payload)
        if at >= 0:
            return at + k
    return payload
