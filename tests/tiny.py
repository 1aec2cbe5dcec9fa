"""Tiny models and tokenizers built on the spot, saved with save_pretrained so the real loading code runs.

No network: the word-level tokenizer is trained here with `tokenizers`; BERT models reuse the bundled
demo model's vocabulary.
"""
from __future__ import annotations

from pathlib import Path

WORDS = ("the a an of to and in is it that for on with as was by this be are from or at which "
         "contract party shall terminate agreement notice confidential liability damages payment "
         "user assistant system hello world question answer yes no good bad cat dog sun moon "
         "one two three four five six seven eight nine ten").split()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(with_chat_template: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?;:'\"()-":
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": specials[4:]})
    if with_chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(path: str | Path, *, chat_template: bool = True, layers: int = 2, hidden: int = 32,
                    seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = make_tokenizer(chat_template)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_gpt2(path: str | Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    tok = make_tokenizer(with_chat_template=False)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=4, n_positions=512,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_bert(path: str | Path, *, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A tiny BERT base model (no head) with the demo model's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ftstudio.engine.models import demo_model_path

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(demo_model_path())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=hidden * 2, max_position_embeddings=512)
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_bpe_tokenizer(*, eos: str = "<|im_end|>", chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer (GPT-2 style, as SmolLM2 and Qwen2 have), trained here on WORDS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = " ".join(WORDS)
    tok.train_from_iterator([text, text.upper(), "user assistant system\n" * 3], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token=eos, pad_token="<|endoftext|>",
                                   unk_token=None)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def save_tiny_causal_bpe(path: str | Path, arch: str = "llama", *, seed: int = 0, tie: bool = False,
                         eos: str = "<|im_end|>") -> Path:
    """A tiny Llama or Qwen2 with the byte-level BPE tokenizer above (what GGUF export writes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tok = make_bpe_tokenizer(eos=eos)
    common = dict(vocab_size=len(tok) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=tie)
    cfg, cls = ((LlamaConfig(**common), LlamaForCausalLM) if arch == "llama"
                else (Qwen2Config(**common), Qwen2ForCausalLM))
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # larger than the default init, so logits differ clearly between tokens
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
