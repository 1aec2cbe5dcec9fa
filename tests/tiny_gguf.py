"""Tiny models of every architecture GGUF export writes, with tokenizers built here by `tokenizers`: the
byte-level BPE of tiny.py, or a SentencePiece-style one (byte-fallback BPE with `<0xNN>` byte tokens, the
"▁" word marker, `<unk>`/`<s>`/`</s>` first, as Llama 2, Mistral, Gemma and Phi-3 ship in tokenizer.json)."""
from __future__ import annotations

from pathlib import Path

from tiny import CHATML_TEMPLATE, WORDS, make_bpe_tokenizer

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}"
)
FAMILY = {  # chat template, its special tokens, eos
    "chatml": (CHATML_TEMPLATE, ["<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "gemma": (GEMMA_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"], "<eos>"),
    "phi3": (PHI3_TEMPLATE, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|endoftext|>"),
}


def make_spm_tokenizer(*, prefix: str = "legacy", family: str = "chatml"):
    """Byte-fallback BPE in the SentencePiece layout: specials first, 256 byte tokens, then the learned pieces.
    `prefix` says how "▁" goes before the text: "legacy" (a Prepend normalizer, before every piece of text,
    as Llama 2 and Phi-3 have), "first" (a Metaspace pre-tokenizer, at the start only, as Mistral v0.3 has) or
    "none" (Gemma). `<think>` is an added token that is not special."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    template, chat_specials, eos = FAMILY[family]
    base = ["<unk>", "<s>", "</s>"] if family != "gemma" else ["<pad>", "<eos>", "<bos>", "<unk>"]
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "\u2581")
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never" if prefix == "none" else "always")
    text = " ".join(WORDS)
    trainer_tok.train_from_iterator([text, text.capitalize(), "user assistant system model\n" * 3],
                                    trainer=trainers.BpeTrainer(vocab_size=260, show_progress=False))
    learned = sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab = {t: i for i, t in enumerate(base + [f"<0x{b:02X}>" for b in range(256)])}
    for piece, _ in learned:
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in __import__("json").loads(trainer_tok.to_str())["model"]["merges"]]
    unk = "<unk>"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    if prefix == "first":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    else:
        steps = [normalizers.Prepend("\u2581")] if prefix == "legacy" else []
        tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if prefix != "none" else []))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in base])
    if eos not in vocab:
        chat_specials = chat_specials + [eos]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in chat_specials])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    bos = "<bos>" if family == "gemma" else "<s>"
    if family != "phi3":  # Llama 2, Mistral and Gemma put BOS first; Phi-3's template starts the text itself
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   pad_token="<pad>" if family == "gemma" else unk)
    fast.chat_template = template
    return fast


def save_tiny(path: str | Path, arch: str, *, seed: int = 0) -> Path:
    """A tiny model of `arch` (llama, llama-spm, mistral, qwen3, gemma2, gemma3, phi3) saved with its tokenizer."""
    import torch
    import transformers as tf

    path = Path(path)
    if arch in ("qwen3", "llama"):
        tok = make_bpe_tokenizer()
    else:
        family = {"gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3"}.get(arch, "chatml")
        prefix = {"gemma": "none", "phi3": "legacy"}.get(family, "legacy" if arch == "llama-spm" else "first")
        tok = make_spm_tokenizer(prefix=prefix, family=family)
    common = dict(vocab_size=len(tok) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                  tie_word_embeddings=False)
    if arch in ("llama", "llama-spm"):
        cfg, cls = tf.LlamaConfig(**common), tf.LlamaForCausalLM
    elif arch == "mistral":
        cfg, cls = tf.MistralConfig(**common, sliding_window=None), tf.MistralForCausalLM
    elif arch == "qwen3":
        # head_dim 128 as every Qwen3 has: transformers' GGUF reader does not read qwen3's key_length back
        cfg, cls = tf.Qwen3Config(**common, head_dim=128), tf.Qwen3ForCausalLM
    elif arch == "phi3":
        cfg, cls = tf.Phi3Config(**common, original_max_position_embeddings=256), tf.Phi3ForCausalLM
    elif arch in ("gemma2", "gemma3"):
        # head_dim = query_pre_attn_scalar = 256, as Gemma 2B/9B have: llama.cpp scales attention by the head size
        gemma = {**common, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
                 "query_pre_attn_scalar": 256, "sliding_window": 64, "tie_word_embeddings": True}
        if arch == "gemma2":
            cfg, cls = tf.Gemma2Config(**gemma), tf.Gemma2ForCausalLM
        else:
            cfg, cls = tf.Gemma3TextConfig(**gemma), tf.Gemma3ForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # larger than the default init, so logits differ clearly between tokens
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            elif name.endswith("norm.weight"):
                p.normal_(0, 0.3) if arch.startswith("gemma") else p.normal_(1, 0.3)   # shifts must be checked
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

