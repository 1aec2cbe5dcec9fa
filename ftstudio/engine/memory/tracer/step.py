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
loss, a model whose forward cannot run on fake tensors (data-dependent routing). Those fall back to the closed
form of plan.py, with a wider margin. Offloaded activations are traced as the trainer offloads them
(:func:`offloaded`: torch's ``save_on_cpu`` around the forward).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from ftstudio.engine.memory.tracer.live import CUDA_BLOCK, LiveBytes, round_block
from ftstudio.engine.memory.tracer.rules import CudaAutocastRules, unpacked_rows
from ftstudio.engine.models.structure import checkpoint_blocks


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
    step_bytes: int = 0                 # with in_backward: the update's transient, bytes per value of the tensor
    offload: bool = False               # what the forward saves outside checkpoints lives in CPU memory
    reentrant: bool = False             # checkpoints are reentrant (their inputs pass through offload's hooks)
    padded: bool = False                # rows of a batch differ in length: an attention mask is passed
    num_labels: int = 2
    block: int = CUDA_BLOCK             # allocator rounding (1 on the CPU)
    loss_fn: object = None              # loss_fn(model, batch, chunked=bool): the trainer's causal-LM loss
    compiled: bool = False              # blocks under torch.compile: AOTAutograd's partition of each (aot below)
    fp8: str | None = None              # torchao's Float8Linear in the blocks ("tensorwise" | "rowwise"; issue 33)


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
    # the parameters' shapes of each traced model (blocks traced, {name: shape}) and the model's depth: what the
    # optimizer state is planned from (:meth:`extrapolate`), the real module's tensors, experts included
    tensors: list[tuple[int, dict]] = field(default_factory=list)
    depth: int = 0

    def extrapolate(self, per_model) -> int:
        """``per_model({name: shape})`` (bytes of a traced model) carried to the model's depth, as the peaks are."""
        values = [(n, per_model(shapes)) for n, shapes in self.tensors]
        if len(values) < 2:
            return int(values[0][1]) if values else 0
        (n1, a), (n2, b) = values[:2]
        return int(round(a + (self.depth - n1) * (b - a) / (n2 - n1)))


def hf_config(model_config: dict, *, trust_remote_code: bool = False, source: str | None = None):
    """A transformers config object from a config.json dict (remote code only when trusted)."""
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoConfig

    cfg = dict(model_config)
    mt = cfg.pop("model_type", None)
    if trust_remote_code and source and cfg.get("auto_map"):
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
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
    """Trace the step of ``config`` (a transformers config) for ``choices``; see the module docstring.

    A model deeper than three passes of its layer pattern is traced with two and three passes and extrapolated.
    The training peak is the larger of two lines: the peak until the top block's backward is done (activations of
    every block still saved: it grows by a block's activations per block) and the peak after it (gradients of
    the finished blocks: it grows by a block's gradients); the largest moment of a deep model is at one of these
    ends, while a shallow trace's single peak may sit at the other."""
    t0 = time.perf_counter()
    depth = int(config.num_hidden_layers)
    period = layer_period(config)
    if depth <= 3 * period:
        points = [(depth, _trace_once(config, choices, trust_remote_code))]
    else:
        points = [(n, _trace_once(_with_layers(config, n), choices, trust_remote_code))
                  for n in (2 * period, 3 * period)]
    (n1, a), rest = points[0], points[1:]
    if rest:
        n2, b = rest[0]
        scale = (depth - n1) / (n2 - n1)

        def at(key: str) -> int:
            return int(round(a[key] + scale * (b[key] - a[key])))
        train_peak = max(at("first"), at("last"))
        per_layer = int((b["train_peak"] - a["train_peak"]) / (n2 - n1))
    else:
        def at(key: str) -> int:
            return int(a[key])
        train_peak, per_layer = a["train_peak"], 0
    return Trace(weights=at("weights"), gradients=at("gradients"), train_peak=train_peak,
                 eval_peak=at("eval_peak"), params=at("params"), largest=max(a["largest"], points[-1][1]["largest"]),
                 layers_traced=tuple(n for n, _ in points), seconds=time.perf_counter() - t0, per_layer=per_layer,
                 notes=list(a["notes"]), tensors=[(n, p["tensors"]) for n, p in points], depth=depth)


def _block_hooks(model, live: LiveBytes):
    """Count, in ``live.region``, the blocks whose every parameter has its gradient (their backward is done).
    Returns (number of blocks, a function that starts the count again for the next backward)."""
    from ftstudio.engine.models.structure import find_block_list

    blocks = find_block_list(model)
    if blocks is None:
        return 0, lambda: None
    owners: list[list] = []
    left: list[int] = []
    for i, block in enumerate(blocks):
        params = list({id(p): p for p in block.parameters()}.values())
        owners.append(params)
        left.append(len(params))

        def done(_p, i=i):
            left[i] -= 1
            if left[i] == 0:
                live.region += 1
        for p in params:
            p.register_post_accumulate_grad_hook(done)

    def restart():
        live.region = 0
        for i, params in enumerate(owners):
            left[i] = len(params)
    return len(blocks), restart


def _build(config, choices: StepChoices, trust_remote_code: bool):
    from ftstudio.engine.hf_imports import ready
    ready()      # loaded under one lock: threads (engine/hf_imports.py)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kw = {"trust_remote_code": trust_remote_code, "dtype": torch.get_default_dtype()}   # not config.json's dtype
    if choices.attention not in ("auto", "", None):
        kw["attn_implementation"] = choices.attention
    if choices.task == "classification":
        config.num_labels = choices.num_labels
        if getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0
        return AutoModelForSequenceClassification.from_config(config, **kw)
    return AutoModelForCausalLM.from_config(config, **kw)   # dtype: the caller's default (config.dtype ignored)


def _trace_once(config, choices: StepChoices, trust_remote_code: bool, *, fake: bool = True) -> dict:
    """One traced step of ``config`` as built (``fake=False``: the same step on real CPU tensors, for the tests
    that check the fake trace against what torch really allocates)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    config = _with_layers(config, config.num_hidden_layers)   # a copy: the caller's config is not changed
    if getattr(config, "use_cache", None) and choices.compiled:
        # the trainer turns the KV cache off where it compiles (train/compiling.py); an eager run keeps the
        # config's: a model that builds its cache in training (GPT-2: a copy of each block's keys and values,
        # 0.30 GB at 8 × 1024 on an H100) holds it in the plan too
        config.use_cache = False
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(choices.precision)
    param_dtype = torch.bfloat16 if choices.precision == "bf16" else torch.float32
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext()
    live = LiveBytes(choices.block)
    notes: list[str] = []
    with mode:
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
        if choices.fp8:      # the trainer's conversion (same layers): its casts and fp8 saves run on fake tensors
            from ftstudio.engine.models.float8 import convert
            convert(model, choices.fp8)
        if choices.checkpointing:
            # The recompute in backward runs under the same CUDA rules as the forward (checkpoint's context_fn)
            rules_for = (lambda: CudaAutocastRules(autocast_dtype)) if choices.block > 1 else nullcontext
            # (reentrant checkpoints, the trainer's choice with offload, recompute inside the rules' scope)
            ck = {"use_reentrant": True} if choices.reentrant else {
                "use_reentrant": False, "context_fn": lambda: (nullcontext(), rules_for())}
            checkpoint_blocks(model, ck)
            if choices.reentrant:
                _recompute_under(model, rules_for)
        model.train()
        weights = sum(round_block(p.untyped_storage().nbytes(), choices.block)
                      for p in {id(p): p for p in params}.values())
        if choices.in_backward:
            # each tensor is updated as its gradient completes, then the gradient is freed: the update's transient
            # (fp32 copies, dequantised 8/4-bit states) is allocated at that moment of the backward, not at its peak
            # (a tied embedding's, the largest tensor, comes at the very end, when the activations are gone)
            per = int(choices.step_bytes)

            def stepped(p):
                if per:
                    torch.empty(per * p.numel(), dtype=torch.uint8)
                p.grad = None
            for p in params:
                p.register_post_accumulate_grad_hook(stepped)
        if choices.compiled and choices.checkpointing and choices.reentrant:
            # AOTAutograd's joint trace runs autograd.grad, which a reentrant checkpoint refuses: the blocks are
            # traced eagerly inside their checkpoints (only each block's input is kept either way; the recompute's
            # transient is the eager one, which errs high)
            notes.append("compiled blocks inside reentrant checkpoints traced uncompiled (errs high)")
        elif choices.compiled:
            from ftstudio.engine.memory.tracer.compiled import compile_blocks_aot
            compile_blocks_aot(model)
        n_blocks, restart = _block_hooks(model, live)
        batch = _batch(config, choices)
        amp = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        rules = CudaAutocastRules(autocast_dtype) if choices.block > 1 else nullcontext()   # planning a CUDA step
        with live, rules, unpacked_rows():
            live.count(params)
            live.reset_peak()
            for _ in range(max(1, min(2, choices.grad_accum))):   # a second micro-batch runs with gradients alive
                restart()
                with offloaded(live) if choices.offload else nullcontext(), amp:
                    loss = _loss(model, batch, choices)
                loss.backward()
                del loss
            live.settle()
            train_peak, regions = live.peak, dict(live.region_peaks)
            live.region = 0
            grads = sum(round_block(p.grad.untyped_storage().nbytes(), choices.block)
                        for p in {id(p): p for p in params}.values() if p.grad is not None)
            for p in params:
                p.grad = None
            live.reset_peak()
            model.eval()
            with torch.no_grad(), amp:
                out = _loss(model, batch, choices)
            del out
            live.settle()
            eval_peak = live.peak
    largest = max((p.numel() for p in params), default=0)
    n_params = sum(p.numel() for p in {id(p): p for p in params}.values())
    first = regions.get(0, train_peak) if n_blocks >= 2 else train_peak
    last = max(regions.get(n_blocks - 1, 0), regions.get(n_blocks, 0)) if n_blocks >= 2 else train_peak
    return {"weights": weights, "gradients": grads, "train_peak": train_peak, "eval_peak": eval_peak,
            "first": first, "last": last,
            "params": n_params, "largest": largest, "notes": notes,
            "tensors": {name: tuple(p.shape) for name, p in model.named_parameters()}}


def _recompute_under(model, rules_for) -> None:
    """A reentrant checkpoint recomputes its block inside autograd's backward, where the torch-function modes of
    the traced step are not active (its own forward, under no_grad, sees them): without this, a CPU recompute ran
    SDPA with its dropout, the math kernel keeping (B, H, S, S) scores that CUDA's fused kernel never makes (a
    BERT-base Largest plan +1.4 GB per traced block). Each block's recompute runs under ``rules_for()`` again."""
    import functools

    def under_rules(checkpoint_fn, fn, *args, **kwargs):
        def run(*a, **k):
            if not torch.is_grad_enabled():      # the checkpoint's forward: the step's own modes are active
                return fn(*a, **k)
            with rules_for():
                return fn(*a, **k)
        return checkpoint_fn(run, *args, **kwargs)

    for module in model.modules():
        fn = getattr(module, "_gradient_checkpointing_func", None)
        if fn is not None and not getattr(fn, "_under_rules", False):
            wrapped = functools.partial(under_rules, fn)
            wrapped._under_rules = True
            module._gradient_checkpointing_func = wrapped


def offloaded(live: LiveBytes):
    """The trainer's offload (train/speed.offload_context: ``torch.autograd.graph.save_on_cpu`` around the
    forward) on the tracer's tensors: each tensor the forward saves outside a checkpoint is packed into a host
    copy that is not counted (the device copy dies when nothing else holds it), and unpacked in backward into a
    new device copy that is counted, as save_on_cpu's ``.to(device)`` allocates one."""
    def pack(t):
        with live.uncounted():
            host = t.detach().clone()
        return host

    def unpack(host):
        return host.clone()                    # the device copy backward reads: counted

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _batch(config, choices: StepChoices) -> dict:
    b, s = choices.batch, choices.seq_len
    ids = torch.zeros(b, s, dtype=torch.long)
    batch = {"input_ids": ids}
    if choices.padded:          # (a classifier's all-ones mask is dropped by transformers before SDPA)
        mask = torch.ones(b, s, dtype=torch.long)
        if b > 1 and s > 1:
            mask[-1, -1] = 0                   # one padded token: the mask is needed, as in a padded batch
        batch["attention_mask"] = mask
    batch["labels"] = torch.zeros(b, dtype=torch.long) if choices.task == "classification" else ids
    return batch


def _loss(model, batch: dict, choices: StepChoices):
    if choices.task == "classification" or choices.loss_fn is None:
        if choices.loss == "chunked" and choices.task != "classification":
            raise ValueError("the chunked loss is traced through the trainer's loss function (StepChoices.loss_fn)")
        return model(**batch).loss
    return choices.loss_fn(model, batch, chunked=choices.loss == "chunked")




__all__ = ["LiveBytes", "CudaAutocastRules", "StepChoices", "Trace", "trace_step", "hf_config", "layer_period",
           "round_block", "CUDA_BLOCK"]
