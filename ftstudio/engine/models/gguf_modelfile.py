"""An Ollama Modelfile beside a GGUF export: ``FROM`` the file, the chat template as Ollama's Go template,
the model's default system prompt as ``SYSTEM``, and a ``PARAMETER stop`` for its end-of-turn and eos tokens.

The Jinja template is not translated by parsing it: it is rendered (with transformers) on marker messages,
which gives the text each role's turn opens and closes with, the generation prompt, and any system prompt
the template adds by itself (SmolLM2's). A template that is such a sequence of turns is written as a Go
template built from those pieces, and only after rendering the same conversations both ways gives the same
text; any other (tools, dates, content rewritten per turn) is left to Ollama, which picks a template from
the GGUF's own ``tokenizer.chat_template``, and the Modelfile says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")
_M = {"system": "FTSX0", "user": "FTSX1", "assistant": "FTSX2", "user2": "FTSX3"}


@dataclass
class Turns:
    """The template as turns: (opening, closing) text per role, the generation prompt, a default system."""
    wrap: dict
    generation: str
    default_system: str | None
    bos: str = ""

    def render(self, messages: list[dict]) -> str:
        if self.default_system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        return self.bos + "".join(self.wrap[m["role"]][0] + m["content"] + self.wrap[m["role"]][1]
                                  for m in messages) + self.generation

    def go_template(self, adds_bos: bool) -> str:
        """Ollama's template; the BOS text is left to llama.cpp where the GGUF says to add it."""
        roles = [r for r in ROLES if r in self.wrap]
        branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{self.wrap[role][0]}'
                           f"{{{{ .Content }}}}{self.wrap[role][1]}" for i, role in enumerate(roles))
        start = "" if adds_bos else self.bos
        return f"{start}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}{self.generation}"


def template_turns(tok) -> Turns | None:
    """The tokenizer's chat template as Turns, checked on several conversations; None when it is not one."""
    def render(msgs, gen=False):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    try:
        u = {"role": "user", "content": _M["user"]}
        a = {"role": "assistant", "content": _M["assistant"]}
        u2 = {"role": "user", "content": _M["user2"]}
        r1, r2, r4 = render([u]), render([u, a]), render([u, a, u2])
        gen = render([u], gen=True)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain chat is not one we can translate
        return None
    eos = tok.eos_token or ""
    if eos and all(r.endswith(eos) for r in (r1, r2, r4)) and not gen.endswith(eos):
        r1, r2, r4 = (r[:-len(eos)] for r in (r1, r2, r4))   # Phi-3 ends a chat with eos unless it prompts
    bos = tok.bos_token if tok.bos_token and r1.startswith(tok.bos_token) else ""
    if not (r2.startswith(r1) and r4.startswith(r2) and gen.startswith(r1)) or bos and not r4.startswith(bos):
        return None
    close_a = r2[r2.index(_M["assistant"]) + len(_M["assistant"]):]
    between = r4[r4.index(_M["assistant"]) + len(_M["assistant"]):r4.index(_M["user2"])]
    if not between.startswith(close_a):
        return None
    open_u = between[len(close_a):]
    head, _, close_u = r1[len(bos):].partition(_M["user"])
    if not head.endswith(open_u):
        return None
    open_a = r2[len(r1):r2.index(_M["assistant"])]
    wrap = {"user": (open_u, close_u), "assistant": (open_a, close_a)}
    default = head[:len(head) - len(open_u)]
    try:
        rs = render([{"role": "system", "content": _M["system"]}, u])[len(bos):]
        open_s, _, rest = rs.partition(_M["system"])
        close_s = rest[:rest.index(open_u + _M["user"])]
        wrap["system"] = (open_s, close_s)
    except Exception:  # noqa: BLE001 - no system role (Gemma's template refuses one)
        if default:
            return None
    system = None
    if default:
        if not (default.startswith(wrap["system"][0]) and default.endswith(wrap["system"][1])):
            return None
        system = default[len(wrap["system"][0]):len(default) - len(wrap["system"][1])]
    turns = Turns(wrap, gen[len(r1):], system, bos)
    return turns if _agrees(turns, render) else None


def _agrees(turns: Turns, render) -> bool:
    """The Go template's text equals the Jinja template's on conversations other than the ones read."""
    chats = [[("user", "What is 2+2?")],
             [("user", "hi"), ("assistant", "Hello! How can I help?"), ("user", "Tell me\na joke.")]]
    if "system" in turns.wrap:
        chats.append([("system", "Be brief."), ("user", "hi"), ("assistant", "ok"), ("user", "more")])
    for chat in chats:
        msgs = [{"role": r, "content": c} for r, c in chat]
        try:
            if render(msgs, True) != turns.render(msgs):
                return False
        except Exception:  # noqa: BLE001
            return False
    return True


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_modelfile(gguf_path: str | Path, model_dir: str | Path, vocab: dict) -> tuple[Path, str]:
    """Write ``<gguf stem>.Modelfile`` beside the GGUF; returns (path, what the template became)."""
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(model_dir)
    turns = template_turns(tok) if getattr(tok, "chat_template", None) else None
    if turns is not None and '"""' in turns.go_template(False) + (turns.default_system or ""):
        turns = None    # a Modelfile's triple-quoted text cannot hold three quotes
    lines = [f"# Ollama: ollama create NAME -f {gguf_path.stem}.Modelfile && ollama run NAME",
             f"FROM ./{gguf_path.name}"]
    if turns is not None:
        how = "translated"
        lines.append("# The model's chat template, as Ollama's Go template (checked against the Jinja one).")
        lines.append(f'TEMPLATE """{turns.go_template(bool(vocab.get("add_bos")))}"""')
        if turns.default_system:
            lines.append("# The system prompt the template adds when a chat has none.")
            lines.append(f'SYSTEM """{turns.default_system}"""')
    elif getattr(tok, "chat_template", None):
        how = "left to Ollama"
        lines.append("# The chat template is not a plain sequence of turns, so it is not translated here: Ollama "
                     "picks one from the GGUF's tokenizer.chat_template; check `ollama show NAME --template`.")
    else:
        how = "none"
        lines.append("# The model has no chat template: Ollama uses a plain prompt.")
    stops = [t for t in (vocab.get("eot_token"), vocab.get("eos_token")) if t]
    lines += [f"PARAMETER stop {_quote(t)}" for t in dict.fromkeys(stops)]
    path = gguf_path.with_name(gguf_path.stem + ".Modelfile")
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path, how
