"""The work behind the Compare tab, run on a pool thread: generating from one prompt with the base model (θ0)
and the fine-tuned one, and scoring both classifiers on the validation split.

Generation renders the prompt through the chat template the model was trained with (the one saved in the
fine-tuned model's folder, else the base tokenizer's, else the trainer's documented fallback), passes the
model only the inputs ``generate`` takes (a tokenizer may add ``token_type_ids``), and streams the text:
``generate`` runs on its own thread and feeds a ``TextIteratorStreamer`` that this job reads, handing each
piece to ``on_text(which, text)``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from ftstudio.core.config import ModelConfig, RunConfig

from .engine_access import engine

_lock = threading.Lock()  # one comparison at a time: two models in memory are enough
GENERATE_INPUTS = ("input_ids", "attention_mask")


@dataclass
class Sampling:
    """Greedy (do_sample False) or sampled with a temperature, nucleus top_p and a seed (the same draw for both
    models, so a difference is the weights')."""
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0

    def generate_kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def _load(source: str, cfg: ModelConfig, task: str, **kw):
    models = engine("models", "load_model")
    mcfg = ModelConfig(source=source, task=task, trust_remote_code=cfg.trust_remote_code,
                       revision=cfg.revision if source == cfg.source else None)
    loaded = models.load_model(mcfg, task=task, **kw)
    loaded.model.eval()
    return loaded


_base: dict = {}  # (source, revision, trust, task) → the loaded base model, kept between comparisons


def load_base(cfg: ModelConfig, task: str):
    """The base model θ0, loaded once and reused by every comparison of the session (a GGUF file is
    de-quantised again on each load: minutes for a large one). One at a time; :func:`release_base` frees it
    (a training run needs the memory)."""
    key = (cfg.source, cfg.revision, cfg.trust_remote_code, task)
    if key not in _base:
        _base.clear()
        _base[key] = _load(cfg.source, cfg, task)
    return _base[key]


def release_base() -> bool:
    """Drop the kept base model (before a training run, which needs its memory); True if one was kept."""
    with _lock:
        kept = bool(_base)
        _base.clear()
    return kept


def training_template(tuned_tokenizer, base_tokenizer) -> str:
    """The chat template the fine-tune was trained with: saved beside the fine-tuned weights; a model without
    one trained through the fallback, which the export saves too (older exports: the fallback itself)."""
    render = engine("data.render", "FALLBACK_CHAT_TEMPLATE")
    return (getattr(tuned_tokenizer, "chat_template", None) or getattr(base_tokenizer, "chat_template", None)
            or render.FALLBACK_CHAT_TEMPLATE)


def encode_prompt(tok, prompt: str, template: str | None):
    """(model inputs, the text the model sees): a user turn through ``template`` with the generation prompt,
    or the plain prompt when ``template`` is None."""
    if template is not None:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False, chat_template=template)
        enc = tok(text, return_tensors="pt", add_special_tokens=False)  # the template wrote BOS if it wants one
    else:
        text = prompt
        enc = tok(prompt, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in GENERATE_INPUTS}, text


def stop_ids(tok, template: str | None) -> list[int]:
    """EOS and the template's end-of-turn token: a chat turn ends there (a fine-tuned model learnt to stop)."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    if template is not None:
        render = engine("data.render", "end_of_turn")
        saved, tok.chat_template = getattr(tok, "chat_template", None), template
        try:
            eot = render.end_of_turn(tok)
        finally:
            tok.chat_template = saved
        if eot:
            eot_ids = tok(eot, add_special_tokens=False)["input_ids"]
            if len(eot_ids) == 1 and eot_ids[0] not in ids:
                ids.append(eot_ids[0])
    return ids


def _stream(model, tok, enc: dict, kwargs: dict, on_text: Callable[[str], None], cancel: threading.Event) -> str:
    """Run ``generate`` on its own thread, read its streamer here, and return the whole text."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            return cancel.is_set()

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with torch.no_grad():
                model.generate(**enc, **kwargs, streamer=streamer,
                               stopping_criteria=StoppingCriteriaList([Cancelled()]))
        except BaseException as exc:  # handed to the job below; the streamer must still end
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="ftstudio-generate", daemon=True)
    thread.start()
    pieces = []
    try:
        for text in streamer:
            if text:
                pieces.append(text)
                on_text(text)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return "".join(pieces)


def generate_pair(cfg: RunConfig, tuned: str, prompt: str, max_new_tokens: int, chat: bool,
                  sampling: Sampling | None = None, on_text: Callable[[str, str], None] | None = None,
                  cancel: threading.Event | None = None) -> dict:
    """{"base": text, "tuned": text, "prompt": what both models saw}; ``on_text("base"|"tuned", piece)`` as
    the text streams."""
    import torch

    sampling = sampling or Sampling()
    cancel = cancel or threading.Event()
    out: dict = {}
    with _lock:
        tuned_lm = _load(tuned, cfg.model, "causal-lm")
        base_lm = load_base(cfg.model, "causal-lm")
        template = training_template(tuned_lm.tokenizer, base_lm.tokenizer) if chat else None
        for name, lm in (("base", base_lm), ("tuned", tuned_lm)):
            tok = lm.tokenizer
            enc, text = encode_prompt(tok, prompt, template)
            out["prompt"] = text
            kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                          eos_token_id=stop_ids(tok, template) or None, **sampling.generate_kwargs())
            torch.manual_seed(sampling.seed)
            emit = (lambda piece, _n=name: on_text(_n, piece)) if on_text else (lambda piece: None)
            out[name] = _stream(lm.model, tok, enc, kwargs, emit, cancel)
            if cancel.is_set():
                break
        del tuned_lm, base_lm
    out["cancelled"] = cancel.is_set()
    return out


def classify_pair(cfg: RunConfig, tuned: str, on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """{"base"/"tuned": {"accuracy", "macro_f1", "matrix"}, "labels"} on the validation split;
    ``on_progress("base"|"tuned", rows done, rows)`` after each batch."""
    import torch

    data_mod = engine("data", "prepare_data")
    out = {}
    with _lock, torch.no_grad():
        base = _load(cfg.model.source, cfg.model, "classification")
        head = engine("models", "head_labels").head_labels(base.model.config.to_dict())   # as the run numbered them
        prepared = data_mod.prepare_data(cfg.data, base.tokenizer, task="classification", seed=cfg.train.seed,
                                         label_order=head)
        labels = prepared.label_names or []
        id2label = dict(enumerate(labels))
        if not prepared.val:
            raise ValueError("the validation split is empty: set val_fraction > 0 or give val_dataset")
        for name, source in (("base", cfg.model.source), ("tuned", tuned)):
            torch.manual_seed(cfg.train.seed)  # the base model's new head: the same draw as the run's
            lm = _load(source, cfg.model, "classification", num_labels=len(labels), id2label=id2label)
            n = len(labels)
            matrix = [[0] * n for _ in range(n)]
            for i in range(0, len(prepared.val), 16):
                chunk = prepared.val[i:i + 16]
                batch = prepared.collate(chunk)
                batch = {k: v for k, v in batch.items() if k != "labels"}
                pred = lm.model(**batch).logits.argmax(-1).tolist()
                for ex, p in zip(chunk, pred):
                    matrix[int(ex["label"])][int(p)] += 1
                if on_progress is not None:
                    on_progress(name, min(i + 16, len(prepared.val)), len(prepared.val))
            correct = sum(matrix[i][i] for i in range(n))
            out[name] = {"accuracy": correct / max(1, len(prepared.val)), "macro_f1": macro_f1(matrix),
                         "matrix": matrix}
            del lm
        out["labels"] = labels
    return out


def macro_f1(matrix: list[list[int]]) -> float:
    """The mean over classes of F1 from a confusion matrix (rows true, columns predicted)."""
    n = len(matrix)
    scores = []
    for k in range(n):
        tp = matrix[k][k]
        fp = sum(matrix[i][k] for i in range(n)) - tp
        fn = sum(matrix[k]) - tp
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(1, n)
