"""GGUF files: metadata → an HF-style config dict, exact parameter counts, supported-architecture check.

transformers de-quantizes GGUF weights to float when loading (`from_pretrained(folder, gguf_file=name)`), so a
quantized model becomes a normal full-precision model that can be fully fine-tuned. The `gguf` package is an
optional dependency; without it, a clear ModelError says how to install it. No torch import here.
"""
from __future__ import annotations

import functools
import os
import time
from collections import Counter
from pathlib import Path

from ftstudio.core.errors import ModelError

# llama.cpp key suffix (after "<arch>.") → HF config key; the same names across llama.cpp architectures.
_KEYS = {
    "context_length": "max_position_embeddings",
    "embedding_length": "hidden_size",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.layer_norm_epsilon": "layer_norm_eps",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}
# llama.cpp architecture names that transformers knows under another model_type.
_RENAMES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
            "gemma3": "gemma3_text"}


def require_gguf():
    """The gguf module, or a ModelError that says how to get it."""
    try:
        import gguf
    except ImportError:
        raise ModelError("reading .gguf files needs the optional 'gguf' package: pip install gguf") from None
    return gguf


def supported_architectures() -> list[str]:
    """llama.cpp architecture names this transformers version can de-quantize (no torch import)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


# describe_model's last parse outside a ParseOnce, handed to the next scope that opens (one entry; a scope's
# close drops it): the CLI describes the model before the run starts, and the run's own reads then parse nothing.
_HANDOFF: dict = {}


def _file_key(path) -> tuple:
    st = os.stat(path)
    return os.path.realpath(path), st.st_mtime_ns, st.st_size


def _reader(path: Path):
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(str(path))  # shared while a ParseOnce is open
    except Exception as e:  # the reader raises ValueError/struct errors/KeyError on damaged files
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e}). "
                         "Download it again or pick another file.") from None
    if not isinstance(gguf.GGUFReader, functools.partial):     # no scope open: keep it for the next one
        _HANDOFF.clear()
        _HANDOFF[_file_key(path)] = reader
    return reader


def _value(reader, key):
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # an odd field type should not stop describing the model
        return None


def gguf_metadata(path: str | Path) -> dict:
    """Config dict (HF key names), exact parameter count, dominant tensor type and the llama.cpp arch name."""
    path = Path(path)
    require_gguf()
    st = path.stat()
    meta = _cached_metadata(str(path.resolve()), st.st_mtime_ns, st.st_size)
    return {**meta, "config": dict(meta["config"])}  # callers may edit the config; the cache stays clean


@functools.lru_cache(maxsize=16)
def _cached_metadata(path: str, mtime_ns: int, size: int) -> dict:
    # Parsing a GGUF's token and merge tables takes ~2 s for a 49k vocabulary; the GUI describes the same
    # file repeatedly, so remember the answer until the file changes (mtime/size are part of the key).
    path = Path(path)
    reader = _reader(path)
    arch = _value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path}: GGUF file has no general.architecture key; it is not a model file.")
    name = _value(reader, "general.name") or ""
    model_type = _RENAMES.get(arch, arch)
    if arch == "llama" and "mistral" in str(name).lower():
        model_type = "mistral"  # llama.cpp stores Mistral as llama; transformers (and we) follow its rename
    cfg: dict = {"model_type": model_type, "_name_or_path": name or path.stem}
    for suffix, hf_key in _KEYS.items():
        value = _value(reader, f"{arch}.{suffix}")
        if value is not None:
            cfg[hf_key] = value
    if isinstance(cfg.get("num_key_value_heads"), list):  # per-layer lists (lfm2): HF wants the largest
        cfg["num_key_value_heads"] = max(cfg["num_key_value_heads"])
    cfg.setdefault("num_key_value_heads", cfg.get("num_attention_heads"))
    if "vocab_size" not in cfg:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is not None:
            cfg["vocab_size"] = len(tokens.data)
    names = {t.name for t in reader.tensors}
    # llama.cpp drops output.weight when the LM head shares the embedding matrix.
    cfg["tie_word_embeddings"] = "output.weight" not in names
    for key, hf_key in (("tokenizer.ggml.bos_token_id", "bos_token_id"),
                        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
                        ("tokenizer.ggml.padding_token_id", "pad_token_id")):
        if isinstance(_value(reader, key), int):
            cfg[hf_key] = _value(reader, key)
    by_type = Counter()
    for t in reader.tensors:
        by_type[t.tensor_type.name] += int(t.n_elements)
    return {"config": cfg, "params": sum(by_type.values()), "dtype": by_type.most_common(1)[0][0] if by_type
            else "unknown", "gguf_architecture": arch, "has_tokenizer": "tokenizer.ggml.tokens" in reader.fields}


def check_supported(path: Path, arch: str, model_type: str) -> None:
    supported = supported_architectures()
    if arch not in supported and model_type not in supported:
        raise ModelError(f"{path}: GGUF architecture '{arch}' cannot be de-quantized by this transformers "
                         f"version (it supports: {', '.join(supported)}). Use the model's Hugging Face folder "
                         "(safetensors) instead, or upgrade transformers.")


PROGRESS_EVERY_S = 0.25  # de-quantising: at most four reports a second (and the first and the last)


def counting_tqdm(progress, real_tqdm):
    """A stand-in for the ``tqdm`` transformers wraps its GGUF tensor loop in: the real tqdm still runs (the
    console's bar on stderr, as before), and ``progress(done, total, elapsed_s)`` is called before the first and
    after each de-quantised tensor (throttled). A call without an iterable of known length is the real tqdm's."""
    def wrap(iterable=None, *args, **kwargs):
        try:
            total = len(iterable)
        except TypeError:
            return real_tqdm(iterable, *args, **kwargs)
        return _counted(real_tqdm(iterable, *args, **kwargs), total, progress)
    return wrap


def _counted(items, total, progress):
    t0 = last = time.monotonic()
    progress(0, total, 0.0)
    for done, item in enumerate(items, 1):
        yield item                                   # the caller de-quantises it before asking for the next
        now = time.monotonic()
        if done == total or now - last >= PROGRESS_EVERY_S:
            last = now
            progress(done, total, now - t0)


class ParseOnce:
    """While open, each unchanged GGUF file is parsed once, however many times it is read.

    Loading a GGUF through transformers reads the file three times (AutoTokenizer reads the config, then the
    tokenizer; from_pretrained reads the weights), each a new ``gguf.GGUFReader`` that walks every metadata
    field again: SmolLM2's 49k tokens and 48k merges are ~2.5 s a parse on a laptop CPU. The weight map then
    rebuilds llama.cpp's tensor-name table once per submodule (~400 times, 7 ms each for SmolLM2). Both are
    pure functions of their inputs, so while open ``gguf.GGUFReader`` (read mode) returns one reader per
    (path, mtime, size) and ``gguf.get_tensor_name_map`` one table per (arch, blocks); what transformers
    computes from them is unchanged. A reader holds its parsed fields (~170 MB of Python objects for a 49k
    vocabulary): close the scope once the model is loaded. Not thread-safe: the trainer opens it around its
    own loads. Use ``with ParseOnce():`` or ``scope = ParseOnce().open()`` ... ``scope.close()``.
    ``progress``: told (done, total, elapsed_s) as transformers de-quantises the weights (:func:`counting_tqdm`).
    """

    def __init__(self, progress=None):
        self.parses = 0                 # readers built while open (a test reads it)
        self._readers: dict = {}
        self._saved = None
        self.progress = progress        # (done, total, elapsed_s) as transformers de-quantises tensor after tensor
        self._tqdm = None

    def open(self) -> "ParseOnce":
        try:
            import gguf
        except ImportError:  # no GGUF support installed: nothing to share (loading says how to install it)
            return self
        if self._saved is None:
            self._saved = (gguf, gguf.GGUFReader, gguf.get_tensor_name_map)
            reader_cls, name_map = self._saved[1], self._saved[2]
            gguf.GGUFReader = functools.partial(self._shared_reader, reader_cls)
            gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
            if self.progress is not None:
                import transformers.modeling_gguf_pytorch_utils as hf_gguf
                if hasattr(hf_gguf, "tqdm"):  # its de-quantising loop: for tensor in tqdm(reader.tensors, ...)
                    self._tqdm = (hf_gguf, hf_gguf.tqdm)
                    hf_gguf.tqdm = counting_tqdm(self.progress, hf_gguf.tqdm)
        return self

    def _shared_reader(self, reader_cls, path, mode="r"):
        if mode != "r":
            return reader_cls(path, mode)
        key = _file_key(path)
        if key not in self._readers:
            if key in _HANDOFF:                      # parsed by describe_model just before: not again
                self._readers[key] = _HANDOFF.pop(key)
            else:
                self._readers[key] = reader_cls(path, mode)
                self.parses += 1
        return self._readers[key]

    def close(self) -> None:
        if self._saved is not None:
            module, reader_cls, name_map = self._saved
            module.GGUFReader, module.get_tensor_name_map = reader_cls, name_map
            self._saved = None
        if self._tqdm is not None:
            self._tqdm[0].tqdm, self._tqdm = self._tqdm[1], None
        self._readers.clear()
        _HANDOFF.clear()

    def __enter__(self) -> "ParseOnce":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
