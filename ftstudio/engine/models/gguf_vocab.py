"""The tokenizer of a GGUF export: token list and types, merges, special token ids, the chat template and the
end-of-turn token (llama.cpp's ``tokenizer.ggml.*`` keys), written with the ``gguf`` package's ``GGUFWriter``
and ``SpecialVocab``.

Byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2, Llama 3) are written as llama.cpp's ``gpt2`` model.
SentencePiece tokenizers (Llama 2 style, byte-fallback BPE) and any other kind are refused by name: their
scores and byte tokens need a converter this module does not have yet.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftstudio.core.errors import ModelError

SUPPORTED_TOKENIZERS = "byte-level BPE (GPT-2 style, as SmolLM2, Qwen2 and Llama 3 have)"


def tokenizer_json(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{model_dir}: no tokenizer.json, which GGUF export reads (the fast tokenizer); save the "
                         "tokenizer with transformers' fast tokenizer (AutoTokenizer(...).save_pretrained)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_tokenizer(model_dir: Path) -> dict:
    """tokenizer.json when it is one we can write, else a ModelError that names its kind."""
    tj = tokenizer_json(model_dir)
    model = tj.get("model") or {}
    kind = model.get("type", "unknown")
    decoder = (tj.get("decoder") or {}).get("type")
    byte_level = decoder == "ByteLevel" or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    # Some converters (transformers' GGUF reader, 5.17 here) set byte_fallback on a byte-level BPE as well: its
    # ByteLevel pre-tokenizer already maps every byte to a token, so the flag changes nothing there.
    if kind == "BPE" and model.get("byte_fallback") and not byte_level:
        raise ModelError(f"{model_dir}: its tokenizer is SentencePiece-style BPE (byte fallback, as Llama 2 has), "
                         f"which GGUF export does not write yet; supported: {SUPPORTED_TOKENIZERS}")
    if kind != "BPE" or not byte_level:
        raise ModelError(f"{model_dir}: its tokenizer is {kind} (decoder {decoder}), which GGUF cannot carry "
                         f"here; supported: {SUPPORTED_TOKENIZERS}")
    return tj


def pre_tokenizer_name(tj: dict) -> str:
    """llama.cpp's name for how text is split before the merges (``tokenizer.ggml.pre``), read from the
    tokenizer's own pre-tokenizer; "default" (with the caller warning) when it is none we know."""
    pre = tj.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"  # SmolLM / SmolLM2: digits one by one, then GPT-2's split
    if types and types[0] == "Split":
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        for name, regex in _known_splits().items():
            if pattern == regex:
                return name
    return "default"


def _known_splits() -> dict[str, str]:
    """Split regexes → llama.cpp pre-tokenizer names, from transformers' own GGUF table (first name wins)."""
    out: dict[str, str] = {}
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items():
            out.setdefault(regex, name)
    except ImportError:  # an older transformers: Qwen2's split is a public constant there too
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
        out[PRETOKENIZE_REGEX] = "qwen2"
    return {name: regex for regex, name in out.items()}


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template puts right after an assistant message (``<|im_end|>``,
    ``<|eot_id|>``, …): what a chat model emits to end its turn. None without a template or such a token."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "FTSTUDIO-END-OF-ANSWER"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this chat simply names no end of turn
        return None
    if marker not in text:
        return None
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    for tid in tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]:
        if tid in special:
            return tid
    return None


def add_vocab(writer, model_dir: Path, vocab_size: int) -> dict:
    """Write the tokenizer keys; returns what was written (eos, end of turn, pre-tokenizer, template)."""
    import gguf
    from transformers import AutoTokenizer

    tj = check_tokenizer(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            text = by_id[i]
            looks_special = text.startswith("<|") and text.endswith("|>")
            types.append(gguf.TokenType.CONTROL if added[i].special or looks_special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    if len(by_id) > vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has {len(by_id)} tokens but the model only {vocab_size} "
                         "embedding rows; resize the embeddings (model.resize_token_embeddings) before exporting")
    pre = pre_tokenizer_name(tj)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    eos = special.special_token_ids.get("eos")
    eot = end_of_turn_id(tok)
    if eot is None:
        eot = _generation_stop(model_dir, eos)
    if eot is not None and eot != eos:
        writer.add_eot_token_id(eot)
    return {"tokenizer": "gpt2", "pre_tokenizer": pre, "eos_token_id": eos, "eot_token_id": eot,
            "eos_token": by_id.get(eos), "eot_token": by_id.get(eot), "merges": len(special.merges),
            "chat_template": special.chat_template is not None}


def _generation_stop(model_dir: Path, eos: int | None) -> int | None:
    """A stop id of generation_config.json other than eos (the end of turn that export wrote there), if any."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    return next((i for i in ids if isinstance(i, int) and i != eos), None)
