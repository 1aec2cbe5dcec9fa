"""The memory of a training step, traced: the model's own forward, loss and backward run on fake tensors on the
CPU (``torch._subclasses.FakeTensorMode``: shapes and dtypes, no data, no weights), under the run's choices
(precision and autocast, batch × sequence, attention kernel, activation checkpointing, loss, gradient
accumulation, the step inside backward), while a dispatch mode counts the bytes of every storage alive.

Any architecture ``transformers`` can build from its config.json is planned this way, remote code too when the
user trusts it: RMSNorm upcasts, q/k norms, soft-capping, eager attention's score matrices, the loss's fp32
logits, a classifier's pooler are counted because they run, not because a formula knows them.

* One pass of layers is traced and repeated: the model is built with ``k`` and ``2k`` blocks (``k`` the period of
  ``layer_types`` when the config alternates sliding and global layers, else 1) and every figure is extrapolated
  linearly to the model's depth; a model no deeper than ``2k`` is traced whole.
* CUDA is what a plan is for, but the tracer runs on the CPU: CPU autocast casts the same matmuls to bf16, and
  :class:`CudaAutocastRules` upcasts what CUDA's autocast runs in fp32 (softmax, log-softmax, layer norm, pow,
  exp, sums...), which the CPU's does not.
* The caching allocator's rounding (every block a multiple of 512 bytes) is applied per storage; its slack
  (reserved − allocated) and the CUDA context stay calibrated in plan.py, the only measured constants.

What is not traced says so in ``Trace.notes``: compiled blocks (inductor rewrites what is saved), Liger's fused
loss, offloaded activations, a model whose forward cannot run on fake tensors (data-dependent routing). Those
fall back to the closed form of plan.py, with a wider margin.
"""
from __future__ import annotations

import math
import time
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_BLOCK = 512            # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes


def round_block(nbytes: int, block: int) -> int:
    return -(-nbytes // block) * block if block > 1 else nbytes


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages alive now, and the peak since :meth:`reset_peak`; real or fake tensors alike.

    Every op's outputs are looked at once; a storage is counted when first seen and released when Python frees it
    (a weak reference), as the caching allocator gets a block back when the last tensor on it dies."""

    def __init__(self, block: int = 1):
        super().__init__()
        self.block = block
        self.live = 0
        self.peak = 0
        self._seen: dict[int, tuple[weakref.ref, int]] = {}

    def _add(self, t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta" and not _is_fake(t):
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):   # a tensor subclass without a storage of its own
            return
        key = id(st)
        held = self._seen.get(key)
        if held is not None and held[0]() is st:
            return
        n = round_block(st.nbytes(), self.block)

        def release(_ref, key=key, n=n):
            self.live -= n
            self._seen.pop(key, None)

        self._seen[key] = (weakref.ref(st, release), n)
        self.live += n
        if self.live > self.peak:
            self.peak = self.live

    def count(self, tensors) -> None:
        """Count tensors made outside an op seen here (e.g. before the mode was entered)."""
        for t in tensors:
            self._add(t)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._add(t)
        return out


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)


# CUDA's autocast runs these in fp32 (aten/src/ATen/autocast_mode.cpp, the CUDA fp32 list); the CPU's keeps bf16.
_F = torch.nn.functional
_T = torch.Tensor
_FP32_OPS = {torch.pow, _T.pow, _T.__pow__, _T.__rpow__, torch.exp, _T.exp, torch.log, _T.log, torch.log1p,
             _T.log1p, torch.expm1, _T.expm1, torch.rsqrt, _T.rsqrt, torch.reciprocal, _T.reciprocal, torch.acos,
             torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv, _F.softplus, _F.layer_norm, _F.group_norm,
             _F.cosine_similarity, _F.nll_loss, _F.mse_loss, _F.l1_loss, _F.smooth_l1_loss, _F.huber_loss, _F.kl_div,
             _F.binary_cross_entropy_with_logits, torch.logsumexp, _T.logsumexp, torch.cdist, torch.dist,
             torch.renorm, torch.norm, _T.norm}
# ... and these with their output dtype set to fp32 (the "fp32_set_opt_dtype" list).
_FP32_OUT_OPS = {torch.softmax, _T.softmax, _F.softmax, torch.log_softmax, _T.log_softmax, _F.log_softmax,
                 torch.sum, _T.sum, torch.prod, _T.prod, torch.cumsum, _T.cumsum, torch.cumprod, _T.cumprod}
_LOW = (torch.bfloat16, torch.float16)
# ... and these in bf16 (the CPU's autocast leaves them alone): the grouped matmul of mixture-of-experts layers.
_LOW_OPS = {f for f in (getattr(torch, "_grouped_mm", None),) if f is not None}


class CudaAutocastRules(TorchFunctionMode):
    """What CUDA does differently from the CPU, for a plan of a CUDA step traced on the CPU: under autocast the
    ops that CUDA's autocast runs in fp32 run in fp32 here too; fp32 grouped-query SDPA goes to the math kernel
    as on CUDA (its fused kernels take no fp32 GQA); SDPA's dropout is applied inside the fused kernel."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_autocast_enabled("cpu"):
            if func in _FP32_OPS and _any_low(args, kwargs):
                args, kwargs = _upcast(args), _upcast(kwargs)
            elif func in _FP32_OUT_OPS and kwargs.get("dtype") is None and _any_low(args, kwargs):
                if func in (torch.softmax, _T.softmax, _F.softmax, torch.log_softmax, _T.log_softmax,
                            _F.log_softmax) and len(args) >= 3 and args[2] is not None:
                    pass                       # dtype given positionally
                else:
                    kwargs = {**kwargs, "dtype": torch.float32}
        if func in _LOW_OPS and torch.is_autocast_enabled("cpu"):      # CUDA's autocast casts these too
            low = torch.get_autocast_dtype("cpu")
            args, kwargs = _downcast(args, low), _downcast(kwargs, low)
        if func is _F.scaled_dot_product_attention:
            if kwargs.get("enable_gqa") and _fp32_gqa(args, kwargs):
                return _math_sdpa(args, kwargs)
            # CUDA's flash and memory-efficient kernels apply dropout inside (a seed is saved, not a mask); the
            # CPU's would fall back to the math kernel and keep the (B, H, S, S) scores: trace without it.
            if len(args) > 4:
                args = (*args[:4], 0.0, *args[5:])
            elif kwargs.get("dropout_p"):
                kwargs = {**kwargs, "dropout_p": 0.0}
        return func(*args, **kwargs)


def _any_low(args, kwargs) -> bool:
    return any(isinstance(t, torch.Tensor) and t.dtype in _LOW for t in tree_flatten((args, kwargs))[0])


def _upcast(tree):
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.dtype in _LOW else tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_upcast(x) for x in tree)
    if isinstance(tree, dict):
        return {k: _upcast(v) for k, v in tree.items()}
    return tree


def _downcast(tree, dtype):
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.dtype == torch.float32 else tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_downcast(x, dtype) for x in tree)
    if isinstance(tree, dict):
        return {k: _downcast(v, dtype) for k, v in tree.items()}
    return tree


def _fp32_gqa(args, kwargs) -> bool:
    q = args[0] if args else kwargs.get("query")
    k = args[1] if len(args) > 1 else kwargs.get("key")
    low = torch.is_autocast_enabled("cpu")
    return (isinstance(q, torch.Tensor) and q.dtype == torch.float32 and not low
            and q.shape[-3] != k.shape[-3])


def _math_sdpa(args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal")
    kw = dict(zip(names, args))
    kw.update({k: v for k, v in kwargs.items() if k in names or k in ("scale", "enable_gqa")})
    q, k, v = kw.pop("query"), kw.pop("key"), kw.pop("value")
    return torch.ops.aten._scaled_dot_product_attention_math(q, k, v, **kw)[0]


@dataclass
class StepChoices:
    """What the traced step does: the run's choices that change the bytes of a step."""
    batch: int
    seq_len: int
    precision: str = "bf16-mixed"       # bf16-mixed | fp16-mixed | bf16 | fp32
    task: str = "causal-lm"             # causal-lm | classification
    attention: str = "auto"             # auto (the model's default) | sdpa | eager | ...
    checkpointing: bool = False
    loss: str = "full"                  # full | chunked (the checkpointed slices of train/loss.py)
    grad_accum: int = 1
    in_backward: bool = False           # the optimizer step inside backward: each gradient freed at once
    padded: bool = False                # rows of a batch differ in length: an attention mask is passed
    num_labels: int = 2
    block: int = CUDA_BLOCK             # allocator rounding (1 on the CPU)


@dataclass
class Trace:
    """Bytes of one training step of the whole model, extrapolated from the traced blocks (allocator-rounded)."""
    weights: int
    gradients: int
    train_peak: int            # weights + gradients alive + activations, the largest moment of forward/backward
    eval_peak: int             # weights + one no-grad forward with its loss
    params: int
    largest: int               # numel of the largest parameter tensor
    layers_traced: tuple[int, ...]
    seconds: float
    per_layer: int = 0         # what one more block adds to the training peak
    notes: list[str] = field(default_factory=list)


def hf_config(model_config: dict, *, trust_remote_code: bool = False, source: str | None = None):
    """A transformers config object from a config.json dict (remote code only when trusted)."""
    from transformers import AutoConfig

    cfg = dict(model_config)
    mt = cfg.pop("model_type", None)
    if trust_remote_code and source and cfg.get("auto_map"):
        return AutoConfig.from_pretrained(source, trust_remote_code=True)
    if not mt:
        raise ValueError("config.json names no model_type")
    return AutoConfig.for_model(mt, **cfg)


def layer_period(config) -> int:
    """Blocks in one repeat of the config's layer pattern (sliding/global alternation), 1 when uniform."""
    types = getattr(config, "layer_types", None)
    if not isinstance(types, (list, tuple)) or not types:
        return 1
    for p in range(1, min(len(types), 8) + 1):
        if all(types[i] == types[i % p] for i in range(len(types))):
            return p
    return 1


def _with_layers(config, n: int):
    """A copy of ``config`` with ``n`` blocks; per-layer lists (layer_types, ...) cut to match."""
    import copy

    c = copy.deepcopy(config)
    total = c.num_hidden_layers
    for key, value in list(vars(c).items()):
        if isinstance(value, list) and len(value) == total and key != "architectures":
            setattr(c, key, value[:n])
    c.num_hidden_layers = n
    return c


def trace_step(config, choices: StepChoices, *, trust_remote_code: bool = False) -> Trace:
    """Trace the step of ``config`` (a transformers config) for ``choices``; see the module docstring."""
    t0 = time.perf_counter()
    depth = int(config.num_hidden_layers)
    period = layer_period(config)
    if depth <= 2 * period:
        points = [(depth, _trace_once(config, choices, trust_remote_code))]
    else:
        points = [(n, _trace_once(_with_layers(config, n), choices, trust_remote_code)) for n in (period, 2 * period)]
    (n1, a), rest = points[0], points[1:]
    if rest:
        n2, b = rest[0]
        scale = (depth - n1) / (n2 - n1)

        def at(key: str) -> int:
            return int(round(a[key] + scale * (b[key] - a[key])))
        per_layer = int((b["train_peak"] - a["train_peak"]) / (n2 - n1))
    else:
        def at(key: str) -> int:
            return int(a[key])
        per_layer = 0
    notes = list(a["notes"])
    return Trace(weights=at("weights"), gradients=at("gradients"), train_peak=at("train_peak"),
                 eval_peak=at("eval_peak"), params=at("params"), largest=max(a["largest"], points[-1][1]["largest"]),
                 layers_traced=tuple(n for n, _ in points), seconds=time.perf_counter() - t0, per_layer=per_layer,
                 notes=notes)


def _build(config, choices: StepChoices, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kw = {"trust_remote_code": trust_remote_code}
    if choices.attention not in ("auto", "", None):
        kw["attn_implementation"] = choices.attention
    if choices.task == "classification":
        config.num_labels = choices.num_labels
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
        return AutoModelForSequenceClassification.from_config(config, **kw)
    return AutoModelForCausalLM.from_config(config, **kw)


def _trace_once(config, choices: StepChoices, trust_remote_code: bool) -> dict:
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = _with_layers(config, config.num_hidden_layers)   # a copy: the caller's config is not changed
    if getattr(config, "use_cache", None):
        config.use_cache = False
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(choices.precision)
    param_dtype = torch.bfloat16 if choices.precision == "bf16" else torch.float32
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    live = LiveBytes(choices.block)
    notes: list[str] = []
    with fake:
        prev = torch.get_default_dtype()
        torch.set_default_dtype(param_dtype)
        try:
            with live:
                model = _build(config, choices, trust_remote_code)
        finally:
            torch.set_default_dtype(prev)
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        if choices.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        weights = sum(round_block(p.untyped_storage().nbytes(), choices.block)
                      for p in {id(p): p for p in params}.values())
        if choices.in_backward:
            for p in params:
                p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
        batch = _batch(config, choices)
        amp = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        rules = CudaAutocastRules() if choices.block > 1 else nullcontext()   # planning a CUDA step
        with live, rules:
            live.count(params)
            live.reset_peak()
            for _ in range(max(1, min(2, choices.grad_accum))):   # a second micro-batch runs with gradients alive
                with amp:
                    loss = _loss(model, batch, choices)
                loss.backward()
                del loss
            train_peak = live.peak
            grads = sum(round_block(p.grad.untyped_storage().nbytes(), choices.block)
                        for p in {id(p): p for p in params}.values() if p.grad is not None)
            for p in params:
                p.grad = None
            live.reset_peak()
            model.eval()
            with torch.no_grad(), amp:
                out = _loss(model, batch, choices)
            del out
            eval_peak = live.peak
    largest = max((p.numel() for p in params), default=0)
    n_params = sum(p.numel() for p in {id(p): p for p in params}.values())
    return {"weights": weights, "gradients": grads, "train_peak": train_peak, "eval_peak": eval_peak,
            "params": n_params, "largest": largest, "notes": notes}


def _batch(config, choices: StepChoices) -> dict:
    b, s = choices.batch, choices.seq_len
    ids = torch.zeros(b, s, dtype=torch.long)
    batch = {"input_ids": ids}
    if choices.padded or choices.task == "classification":
        batch["attention_mask"] = torch.ones(b, s, dtype=torch.long)
    batch["labels"] = torch.zeros(b, dtype=torch.long) if choices.task == "classification" else ids
    return batch


def _loss(model, batch: dict, choices: StepChoices):
    if choices.task == "classification":
        return model(**batch).loss
    from ftstudio.engine.train.loss import causal_lm_loss
    return causal_lm_loss(model, batch, chunked=choices.loss == "chunked")




__all__ = ["LiveBytes", "CudaAutocastRules", "StepChoices", "Trace", "trace_step", "hf_config", "layer_period",
           "round_block", "CUDA_BLOCK"]
