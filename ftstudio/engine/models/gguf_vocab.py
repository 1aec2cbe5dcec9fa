"""The tokenizer of a GGUF export: token list and types, merges, special token ids, the chat template and the
end-of-turn token (llama.cpp's ``tokenizer.ggml.*`` keys), written with the ``gguf`` package's ``GGUFWriter``
and ``SpecialVocab``.

Byte-level BPE tokenizers (GPT-2 style: SmolLM2, Qwen2, Llama 3) are written as llama.cpp's ``gpt2`` model
with their merges. SentencePiece-style tokenizers (byte-fallback BPE in tokenizer.json, as Llama 2, Mistral,
Gemma and Phi-3 have) are written as llama.cpp's ``llama`` model: tokens and types from ``gguf.vocab``'s
``LlamaHfVocab`` (byte tokens ``<0xNN>``, control and user-defined added tokens), and a score per token.
llama.cpp's sentencepiece tokenizer merges the adjacent pair whose joined text has the highest score, while
tokenizer.json ranks its merges; LlamaHfVocab leaves every score at -1000, which would make llama.cpp merge
left to right, so each token's score here is minus the rank of the first merge that makes it: the same
merges in the same order. Any other kind (WordLevel, Unigram, WordPiece) is refused by name.
"""
from __future__ import annotations

import json
from pathlib import Path

from ftstudio.core.errors import ModelError

SUPPORTED_TOKENIZERS = ("byte-level BPE (GPT-2 style, as SmolLM2, Qwen2 and Llama 3 have) and SentencePiece-style "
                        "byte-fallback BPE (as Llama 2, Mistral, Gemma and Phi-3 have)")


def tokenizer_json(model_dir: Path) -> dict:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ModelError(f"{model_dir}: no tokenizer.json, which GGUF export reads (the fast tokenizer); save the "
                         "tokenizer with transformers' fast tokenizer (AutoTokenizer(...).save_pretrained)")
    return json.loads(path.read_text(encoding="utf-8"))


def tokenizer_kind(tj: dict) -> str:
    """llama.cpp's tokenizer model for this tokenizer.json: "gpt2" (byte-level BPE) or "llama" (byte-fallback
    BPE, SentencePiece style); "" for a kind GGUF export cannot write."""
    model = tj.get("model") or {}
    decoder = (tj.get("decoder") or {}).get("type")
    byte_level = decoder == "ByteLevel" or "ByteLevel" in json.dumps(tj.get("pre_tokenizer"))
    if model.get("type") != "BPE":
        return ""
    # Some converters (transformers' GGUF reader, 5.17 here) set byte_fallback on a byte-level BPE as well: its
    # ByteLevel pre-tokenizer already maps every byte to a token, so the flag changes nothing there.
    if byte_level:
        return "gpt2"
    return "llama" if model.get("byte_fallback") else ""


def check_tokenizer(model_dir: Path) -> dict:
    """tokenizer.json when it is one we can write, else a ModelError that names its kind."""
    tj = tokenizer_json(model_dir)
    if not tokenizer_kind(tj):
        kind = (tj.get("model") or {}).get("type", "unknown")
        decoder = (tj.get("decoder") or {}).get("type")
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
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoTokenizer

    tj = check_tokenizer(model_dir)
    kind = tokenizer_kind(tj)
    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has {len(by_id)} tokens but the model only {vocab_size} "
                         "embedding rows; resize the embeddings (model.resize_token_embeddings) before exporting")
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        tokens, types = _gpt2_tokens(tok, by_id, vocab_size)
        pre = pre_tokenizer_name(tj)
    else:
        tokens, types, scores = _spm_tokens(model_dir, tj, tok, by_id, vocab_size)
        pre = "default"
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(adds_space_prefix(tj))
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(model_dir, load_merges=kind == "gpt2", n_vocab=vocab_size)
    # What the tokenizer does, not what its files say or leave out: llama.cpp adds BOS to a sentencepiece
    # vocabulary that does not say otherwise, and tokenizer_config.json often does not say.
    probe = tok("a")["input_ids"]
    bare = tok("a", add_special_tokens=False)["input_ids"]
    special.add_special_token["bos"] = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id] != bare[:1]
    special.add_special_token["eos"] = tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id] != bare[-1:]
    special.add_to_gguf(writer, quiet=True)
    eos = special.special_token_ids.get("eos")
    eot = end_of_turn_id(tok)
    if eot is None:
        eot = _generation_stop(model_dir, eos)
    if eot is not None and eot != eos:
        writer.add_eot_token_id(eot)
    return {"tokenizer": kind, "pre_tokenizer": pre, "eos_token_id": eos, "eot_token_id": eot,
            "eos_token": by_id.get(eos), "eot_token": by_id.get(eot), "merges": len(special.merges),
            "chat_template": special.chat_template is not None, "add_bos": special.add_special_token["bos"],
            "add_space_prefix": adds_space_prefix(tj) if kind == "llama" else None}


def _gpt2_tokens(tok, by_id: dict, vocab_size: int) -> tuple[list, list]:
    import gguf

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
    return tokens, types


def _spm_tokens(model_dir: Path, tj: dict, tok, by_id: dict, vocab_size: int) -> tuple[list, list, list]:
    """Tokens and types from gguf's LlamaHfVocab, scores from the merge ranks (see the module text)."""
    import gguf
    from gguf.vocab import LlamaHfVocab

    try:
        hf = LlamaHfVocab(model_dir)
    except (FileNotFoundError, TypeError, KeyError) as e:
        raise ModelError(f"{model_dir}: its byte-fallback tokenizer is not one llama.cpp's sentencepiece "
                         f"vocabulary reader takes ({e}); supported: {SUPPORTED_TOKENIZERS}") from None
    entries = list(hf.all_tokens())
    for i, (text, _score, _type) in enumerate(entries):
        if by_id.get(i) != text.decode("utf-8"):   # LlamaHfVocab lists base tokens, then added ones in id order
            raise ModelError(f"{model_dir}: token {i} of tokenizer.json is {by_id.get(i)!r} but the sentencepiece "
                             f"reader puts {text.decode('utf-8', 'replace')!r} there (added token ids with gaps?); "
                             "GGUF export needs consecutive ids")
    ranks: dict[str, int] = {}
    for rank, merge in enumerate((tj.get("model") or {}).get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    added = tok.added_tokens_decoder
    tokens, types, scores = [], [], []
    for i in range(vocab_size):
        if i >= len(entries):  # the embedding has more rows than the tokenizer has tokens
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1000.0)
            continue
        text, _score, ttype = entries[i]
        piece = text.decode("utf-8")
        if i in added:  # as llama.cpp's own converter: special → control, other added tokens → user-defined
            ttype = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        if i in added or ttype in (gguf.TokenType.BYTE, gguf.TokenType.CONTROL):
            score = 0.0
        elif piece in ranks:
            score = -float(ranks[piece])
        else:  # single characters (never made by a merge) and pieces no merge reaches
            score = -float(len(ranks) + i)
        tokens.append(text)
        types.append(ttype)
        scores.append(score)
    return tokens, types, scores


def adds_space_prefix(tj: dict) -> bool:
    """Whether the tokenizer puts "▁" before the text (Llama 2, Mistral, Phi-3) or not (Gemma): llama.cpp's
    ``tokenizer.ggml.add_space_prefix``."""
    parts = []
    for key in ("normalizer", "pre_tokenizer"):
        node = tj.get(key) or {}
        parts += node.get("normalizers") or node.get("pretokenizers") or [node]
    for p in parts:
        if p.get("type") == "Prepend" and p.get("prepend") == "\u2581":
            return True
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
    return False


def _generation_stop(model_dir: Path, eos: int | None) -> int | None:
    """A stop id of generation_config.json other than eos (the end of turn that export wrote there), if any."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return None
    ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    return next((i for i in ids if isinstance(i, int) and i != eos), None)
