"""Speed and size options of the training step (the ``memory`` section of RunConfig).

* :func:`compile_blocks` — ``torch.compile`` each transformer block in place (``Module.compile``), so one
  block type compiles once (seconds), state-dict keys keep their names, and checkpointing wrappers stay
  outside the compiled region (the recompute in backward runs the compiled block again).
* :func:`offload_context` + :func:`checkpoint_kwargs` — activation offload: with activation checkpointing
  each block keeps only its input for the backward pass; reentrant checkpointing saves that input through
  ``ctx.save_for_backward``, which ``torch.autograd.graph.save_on_cpu(pin_memory=True)`` moves to pinned CPU
  memory and brings back (asynchronously) when the block is recomputed. Non-reentrant checkpointing keeps its
  inputs alive in a closure on the GPU, so offload switches checkpointing to the reentrant variant.
* :class:`OptimizerInBackward` — one optimizer per parameter, stepped from the parameter's
  post-accumulate-grad hook (torch's documented "optimizer step in backward" pattern), then the gradient is
  freed: full gradients never coexist. The global gradient norm is not known before the first parameter is
  updated, so ``grad_clip`` clips each parameter's gradient to that norm on its own (documented in
  :class:`OptimizerInBackward`); a non-finite gradient is zeroed for its tensor, since the step cannot wait.
* :func:`causal_lm_loss` — the chunked loss: Liger's fused linear cross-entropy on CUDA when liger-kernel is
  installed (no recompute of the logits), else :func:`loss.chunked_cross_entropy` (checkpointed slices);
  the full loss with ``compile``: the head and cross-entropy compiled as one graph (fp32 logits never stored).
"""
from __future__ import annotations

import functools
import math
import sys
from contextlib import nullcontext
from typing import Callable

import torch

from ftstudio.core.errors import ConfigError
from ftstudio.core.events import LogLine
from ftstudio.engine.train import cudnn_attention


# -- torch.compile per block ---------------------------------------------------------------------------
def compile_blocks(model: torch.nn.Module, **compile_kwargs) -> int:
    """Compile every block of the model's main block list in place; returns how many (0 if none found)."""
    from ftstudio.engine.models.structure import find_block_list

    blocks = find_block_list(model)
    if blocks is None:
        return 0
    # Training never reads a KV cache; building one keys each block's graph on its layer index (a recompile
    # per block). Blocks of one class then share one compiled graph; the limit is a guard for odd models.
    if getattr(getattr(model, "config", None), "use_cache", None):
        model.config.use_cache = False
    dynamo = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, key):
            setattr(dynamo, key, max(getattr(dynamo, key), len(blocks) + 8))
    for block in blocks:
        block.compile(**compile_kwargs)     # in place: no "_orig_mod." in the state dict, wrappers outside
    return len(blocks)


# -- activation offload --------------------------------------------------------------------------------
def checkpoint_kwargs(offload: bool) -> dict:
    """``gradient_checkpointing_kwargs`` for HF models: reentrant when the saved block inputs are offloaded
    (only ``ctx.save_for_backward`` passes through the saved-tensor hooks that move them to the CPU)."""
    return {"use_reentrant": bool(offload)}


def offload_context(enabled: bool, device: str = "cuda"):
    """Wrap the forward only: every tensor it saves outside a non-reentrant checkpoint (the block inputs of
    reentrant checkpointing, the final norm's input) lives in (pinned) CPU memory until backward needs it.
    The backward's recompute must run outside: compiled blocks check the strides of what they saved, and
    the CPU copies are contiguous."""
    if not enabled:
        return nullcontext()
    pin = device.startswith("cuda") and torch.cuda.is_available()
    return torch.autograd.graph.save_on_cpu(pin_memory=pin)


# -- the optimizer step inside backward ----------------------------------------------------------------
class OptimizerInBackward(torch.optim.Optimizer):
    """Steps each parameter as soon as its gradient is complete, then frees that gradient.

    ``groups`` are ordinary param groups (``optim.param_groups``); ``make`` builds an optimizer from a list
    of groups. Each parameter gets its own optimizer over a one-parameter copy of its group, and
    ``param_groups`` lists those groups, so an LR scheduler over this object sets every parameter's LR.
    ``step()`` and ``zero_grad()`` are no-ops: the work happened in backward.

    Clipping: with ``max_norm > 0`` each parameter's gradient is scaled to norm ≤ ``max_norm`` on its own
    (per-tensor clipping; the global norm is only known after every tensor has been updated). The global
    norm is still measured: :meth:`grad_norm` returns √Σ‖g‖² of the last backward. A parameter whose gradient
    is not finite is left unchanged except for decay of its moments (its gradient is zeroed): the trainer sees
    the non-finite norm and applies its policy.
    """

    def __init__(self, groups: list[dict], make: Callable[[list[dict]], torch.optim.Optimizer], *,
                 max_norm: float = 0.0):
        self.max_norm = float(max_norm)
        self._opts: dict[torch.nn.Parameter, torch.optim.Optimizer] = {}
        self._hooks = []
        self.param_groups: list[dict] = []
        self._sq: torch.Tensor | None = None
        for group in groups:
            names = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if p in self._opts:
                    continue                      # a tied parameter listed twice
                one = {k: v for k, v in group.items() if k not in ("params", "param_names")}
                one["params"] = [p]
                if names is not None:
                    one["param_names"] = [names[i]]
                opt = make([one])
                self._opts[p] = opt
                self.param_groups.append(opt.param_groups[0])
                self._hooks.append(p.register_post_accumulate_grad_hook(self._hook))
        if not self._opts:
            raise ConfigError("optim.optimizer", "the model has no trainable parameters")
        self.defaults = dict(next(iter(self._opts.values())).defaults)

    @torch.no_grad()
    def _hook(self, p: torch.Tensor) -> None:
        g = p.grad
        n = torch.linalg.vector_norm(g, dtype=torch.float32)
        full = getattr(n, "full_tensor", None)
        if callable(full):   # FSDP2: the hook runs on the sharded gradient; its norm is the whole tensor's
            n, g = full(), g.to_local()   # (every rank runs the hooks in the same order: a matched collective)
        self._sq = n * n if self._sq is None else self._sq + n * n
        finite = torch.isfinite(n)
        if self.max_norm > 0:
            g.mul_(torch.where(finite, (self.max_norm / (n + 1e-6)).clamp(max=1.0), 1.0).to(g.dtype))
        g.masked_fill_(~finite, 0)
        opt = self._opts[p]
        opt.step()
        opt.zero_grad(set_to_none=True)

    def grad_norm(self) -> torch.Tensor:
        """√Σ‖g‖² over the gradients of the last backward (before clipping); resets for the next one."""
        sq, self._sq = self._sq, None
        return torch.zeros(()) if sq is None else sq.sqrt()

    def step(self, closure=None):  # noqa: D102 - the steps ran in backward
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:  # gradients are freed in the hooks
        return None

    @property
    def state(self) -> dict:
        return {p: opt.state[p] for p, opt in self._opts.items() if opt.state.get(p)}

    def state_dict(self) -> dict:
        return {"in_backward": [opt.state_dict() for opt in self._opts.values()]}

    def load_state_dict(self, state_dict: dict) -> None:
        parts = state_dict.get("in_backward")
        if parts is None or len(parts) != len(self._opts):
            raise ConfigError("memory.optimizer_in_backward", "the checkpoint's optimizer state was saved "
                                                              "with a different optimizer_in_backward setting")
        for opt, part in zip(self._opts.values(), parts):
            opt.load_state_dict(part)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The per-parameter optimizers (a sharded checkpoint saves their states by parameter name)."""
        return list(self._opts.values())

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __repr__(self) -> str:
        inner = next(iter(self._opts.values()))
        return f"OptimizerInBackward({len(self._opts)} × {type(inner).__name__}, max_norm={self.max_norm})"


def check_in_backward(precision: str) -> None:
    if precision == "fp16-mixed":
        raise ConfigError("memory.optimizer_in_backward", "cannot be combined with fp16-mixed (the loss-scaled "
                                                          "gradients would be applied unscaled); use bf16-mixed "
                                                          "or bf16")


# -- the chunked / fused causal-LM loss ----------------------------------------------------------------
def liger_available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # noqa: BLE001 - absent, or present but broken (no triton): fall back
        return False
    return True


def fused_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Liger's fused linear cross-entropy (CUDA): mean next-token loss, logits never materialised whole."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    # Liger is a Triton kernel: autocast does not reach it, so cast to the compute dtype ourselves (the
    # cast's backward carries the gradient to fp32 master weights).
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else hidden.dtype
    h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
    bias = head.bias.to(dtype) if getattr(head, "bias", None) is not None else None
    return liger_fused_linear_cross_entropy(h, head.weight.to(dtype), targets, bias, ignore_index=-100)


def plain_head(model) -> bool:
    """True when the model's logits are just ``lm_head(hidden)``: no soft-capping (Gemma 2) or logit scaling
    (Cohere, Granite) that the model's own forward would apply. Only then may the loss bypass that forward."""
    cfg = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        value = getattr(cfg, key, None)
        if value not in (None, 1, 1.0):
            return False
    return model.get_output_embeddings() is not None


def _head_cross_entropy(hidden, weight, bias, targets, scale: float = 1.0, cap: float | None = None):
    from ftstudio.engine.train.loss import transform_logits

    logits = torch.nn.functional.linear(hidden, weight, bias)     # bf16 under autocast, like the model's own
    return torch.nn.functional.cross_entropy(transform_logits(logits.float(), scale, cap), targets, ignore_index=-100)


_COMPILED_HEAD = None


def compiled_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, scale: float = 1.0,
                           cap: float | None = None) -> torch.Tensor:
    """The LM head and mean next-token cross-entropy as one compiled graph: the same numbers as the model's
    own loss (bf16 logits under autocast, upcast to fp32), but inductor fuses the upcast, log-softmax and
    gather, and backward recomputes the softmax from the saved bf16 logits, so the fp32 logits and their
    gradient are never stored whole (with ``compile``, ``loss: full``)."""
    global _COMPILED_HEAD
    if _COMPILED_HEAD is None:
        _COMPILED_HEAD = torch.compile(_head_cross_entropy)
    targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    return _COMPILED_HEAD(hidden.reshape(-1, hidden.shape[-1]), head.weight, getattr(head, "bias", None), targets,
                          scale, cap)


def causal_lm_loss(model, batch: dict, *, loss: str, compiled: bool = False) -> torch.Tensor:
    """The trainer's causal-LM loss: "full" (the model's own; with ``compiled``, the head and loss as one
    compiled graph), or "chunked" (fused Liger kernel on CUDA when installed, else the checkpointed slices of
    train/loss.py)."""
    from ftstudio.engine.train.loss import causal_lm_loss as sliced

    from ftstudio.engine.train.loss import logit_transform

    cuda = batch["input_ids"].is_cuda and model.get_output_embeddings() is not None
    if loss == "chunked" and cuda and plain_head(model) and liger_available():
        head = fused_cross_entropy   # Liger's kernel knows no logit scaling: plain heads only
    elif loss == "full" and compiled and cuda:
        scale, cap = logit_transform(model)   # the compiled head applies the model's own logit transforms
        head = functools.partial(compiled_cross_entropy, scale=scale, cap=cap)
    else:
        return sliced(model, batch, chunked=loss == "chunked")   # the slices apply them too
    # (bypasses_forward below must name exactly the paths that reach this point or the chunked slices)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = getattr(model, model.base_model_prefix, None) or model.model
    hidden = base(**inputs).last_hidden_state
    return head(hidden, model.get_output_embeddings(), batch["labels"])


def bypasses_forward(model, batch: dict, *, loss: str, compiled: bool) -> bool:
    """True when :func:`causal_lm_loss` runs the base model and the head itself instead of ``model(**batch)``
    (chunked, Liger, compiled head): under FSDP2 it must then run as a registered forward method of the root."""
    cuda = batch["input_ids"].is_cuda and model.get_output_embeddings() is not None
    return loss == "chunked" or (loss == "full" and compiled and cuda)


def step_flops(params: int, layers: int, hidden: int, seq_len: int, tokens: int) -> float:
    """Training FLOPs for ``tokens`` tokens: 6·N per token plus attention 12·L·d·s (PaLM's MFU convention,
    causal attention counted fully), as the HF Trainer anchor counts them."""
    return float(6 * params + 12 * layers * hidden * seq_len) * tokens


def mfu(flops: float, seconds: float, peak_tflops: float = 989.0) -> float:
    return flops / max(seconds, 1e-12) / (peak_tflops * 1e12) if math.isfinite(flops) else float("nan")


# -- the attention kernel ----------------------------------------------------------------------------
def choose_attention(model, prepared, device: str, cfg, report) -> None:
    """Set the model's attention kernel (model.attention); for packed rows under flex_attention the
    collator then sends position_ids only and the model builds block-sparse document masks."""
    choice = cfg.model.attention
    packed = bool(getattr(prepared.collate, "packed", False))
    if choice == "auto":
        one_gpu = len(cfg.hardware.gpus) <= 1   # FSDP ranks keep the dense mask and the attention #19 measured
        flex_ok = (packed and device.startswith("cuda") and not getattr(sys, "frozen", False) and one_gpu
                   and getattr(model, "_supports_flex_attn", False) and _flex_available())
        cudnn = _cudnn_first(model, device) if one_gpu else None
        if flex_ok:   # one-document rows take cuDNN's causal kernel, the others flex's per-document masks
            choice = cudnn_attention.PACKED if cudnn else "flex_attention"
        elif cudnn and not packed and not _fixed_length(prepared, cfg.data.seq_len):
            # cuDNN builds a plan for each new sequence length (hundreds of ms each, forward and backward):
            # padded rows of varying length (length-grouped batches, evaluation) would pay it again and again.
            # SmolLM2 on 1,000 short rows took 71 s with cuDNN on the H200, its steps 0.3 s each.
            report(LogLine("Attention: SDPA's own kernels (rows vary in length; cuDNN's fused kernel plans each "
                           "new length anew, so it runs only where every batch has the same length)"))
            choice = None
        else:
            choice = cudnn
    if choice is None:
        return
    if choice == "flex_attention" and not device.startswith("cuda"):
        raise ConfigError("model.attention", f"flex_attention has no backward pass on {device}; use sdpa "
                                             "(or auto)")
    try:
        model.set_attn_implementation(choice)
    except Exception as e:  # noqa: BLE001 - a model without that kernel: say so, keep its default
        if cfg.model.attention != "auto":
            raise ConfigError("model.attention", f"{choice} is not available for this model: {e}") from None
        return
    if choice == cudnn_attention.NAME:
        report(LogLine("Attention: causal rows without padding run cuDNN's fused kernel (SDPA's flash kernel "
                       "otherwise; --attention sdpa keeps SDPA's own choice)"))
    if choice in ("flex_attention", cudnn_attention.PACKED) and packed:
        # transformers detects packed documents from position_ids only without a KV cache: training
        # never reads one, and building it would switch the detection off (attention across documents).
        model.config.use_cache = False
        prepared.collate.positions_only = True
        report(LogLine("Packed rows: " + ("a batch whose rows each hold one document runs cuDNN's causal kernel; "
                                          "rows holding several documents run " if choice != "flex_attention"
                                          else "") + "flex_attention with block-sparse per-document masks (no "
                       "dense L×L mask)"))


FIXED_SHARE = 0.9     # rows at seq_len (cut or full): nearly every batch is then seq_len long


def _fixed_length(prepared, seq_len: int) -> bool:
    """Nearly every training row fills seq_len, so batches keep one length (no new cuDNN plan each step)."""
    rows = getattr(prepared, "train", None) or []
    full = sum(1 for r in rows if len(r.get("input_ids", ())) >= seq_len)
    return bool(rows) and full >= FIXED_SHARE * len(rows)


def _cudnn_first(model, device: str) -> str | None:
    """cudnn_attention.NAME for a model on SDPA on a CUDA GPU (not the frozen bundle), else None (its default)."""
    if (not device.startswith("cuda") or getattr(sys, "frozen", False) or cudnn_attention.MODE == "off"
            or getattr(model.config, "_attn_implementation", None) != "sdpa"):
        return None
    if cudnn_attention.MODE == "global":
        cudnn_attention.prefer_cudnn_globally()
        return None
    cudnn_attention.register(cudnn_attention.PACKED)
    return cudnn_attention.register()


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
