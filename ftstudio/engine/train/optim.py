"""The optimizer and its parameter groups: decoupled weight decay and ULMFiT's discriminative rates.

Layer groups (bottom → top) come from :func:`models.structure.layer_groups`.

Discriminative learning rates (Howard & Ruder, 2018, ULMFiT): the group at depth ``l`` counted from the
top trains at ``lr · ξ^-l``. Depths: head l=0 (the full ``lr``), the last block l=1, …, block 0 l=n,
embeddings l=n+1. Depth counts only groups that hold parameters, so a model with no head parameters
(a base encoder with tied weights and no final norm) gives its last block l=0. With ξ=2.6 the
embeddings of a 30-block model train about 1e-13 times slower than the head: effectively frozen,
which is what the formula asks for; pick a smaller ξ (1.1–1.3) for deep models.

Weight decay (decoupled, AdamW-style) is NOT applied to:
  * biases and every other 0-/1-D parameter (LayerNorm/RMSNorm scales, scalars);
  * parameters of any module whose class name contains "Norm" (LayerNorm, RMSNorm, GroupNorm, …,
    including model-specific classes such as LlamaRMSNorm or T5LayerNorm);
  * embedding tables (``nn.Embedding``: token AND learned position embeddings). A row of a token
    that never occurs in the fine-tuning data gets no gradient, so decay would only shrink it toward
    zero: forgetting with nothing learned in exchange.
Decay pulls weights toward zero; L2-SP (engine/forgetting/anchors.py) pulls them toward θ0. They are different.
"""
from __future__ import annotations

import math
import re
import warnings

import torch
from torch import nn

from ftstudio.core.config import OptimConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.models.structure import layer_depths, layer_groups

_NORM_NAME = re.compile(r"norm", re.IGNORECASE)


def layer_lr_scales(model: nn.Module, xi: float) -> dict[str, float]:
    """Group name (bottom → top) → learning-rate multiplier ξ^-l, for the GUI's bars."""
    if xi < 1.0:
        raise ConfigError("optim.layer_lr_decay", f"{xi!r} must be >= 1 (1 = the same rate everywhere)")
    return {g: float(xi) ** -d for g, d in layer_depths(model).items()}


# -- weight-decay exemptions -----------------------------------------------------------------------
def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: biases, norms, embeddings (see module docstring)."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        exempt_module = isinstance(mod, nn.Embedding) or bool(_NORM_NAME.search(type(mod).__name__))
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if exempt_module or p.ndim < 2 or p_name == "bias" or p_name.endswith("_bias"):
                out.add(full)
    return out


# -- the optimizer ---------------------------------------------------------------------------------
def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Torch param groups: per layer group (when ξ > 1) × {decay, no decay}; each with "name" and its peak "lr"."""
    params = dict(model.named_parameters())
    exempt = no_decay_names(model)
    if cfg.layer_lr_decay > 1.0:
        scales = layer_lr_scales(model, cfg.layer_lr_decay)
        buckets = [(g, scales[g], names) for g, names in layer_groups(model)]
    else:
        names = [n for n, p in params.items() if p.requires_grad]
        buckets = [("all", 1.0, names)]
    groups = []
    for g, scale, names in buckets:
        for decay in (True, False):
            chosen = [n for n in names if (n in exempt) != decay]
            if not chosen:
                continue
            groups.append({
                "params": [params[n] for n in chosen],
                "param_names": chosen,
                "name": g if decay else f"{g} (no decay)",
                "layer": g,
                "lr_scale": scale,
                "lr": cfg.lr * scale,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            })
    if not groups:
        raise ConfigError("optim.optimizer", "the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, device_type: str,
                    in_backward: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``cfg.optimizer`` names over :func:`param_groups` (each group's "lr" is its peak).

    Weights stored in bf16 (``precision: bf16``) get update rules that do not lose small steps to bf16
    rounding: adamw → :class:`CompensatedAdamW` (stochastic rounding or Kahan, ``bf16_rounding``), adamw8bit →
    :class:`fp8_state_adamw.Fp8StateAdamW` (stochastic rounding). ``in_backward`` wraps the same rule in
    :class:`in_backward.OptimizerInBackward` (one optimizer per parameter, stepped as its gradient completes).
    """
    groups = param_groups(model, cfg)
    bf16 = all(p.dtype == torch.bfloat16 for g in groups for p in g["params"])
    make = optimizer_factory(cfg, device_type=device_type, bf16_weights=bf16)
    if in_backward:
        from ftstudio.engine.train.in_backward import OptimizerInBackward
        return OptimizerInBackward(groups, make, max_norm=cfg.grad_clip)
    return make(groups)


def optimizer_factory(cfg: OptimConfig, *, device_type: str, bf16_weights: bool = False):
    """A function param groups → optimizer for ``cfg.optimizer``; raises ConfigError if it cannot run here."""
    kind = cfg.optimizer
    betas = (cfg.beta1, cfg.beta2)
    common = dict(lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    accel = {"fused": True} if device_type == "cuda" else {"foreach": True}
    if kind == "adamw":
        if bf16_weights:
            return lambda groups: CompensatedAdamW(groups, **common, rounding=cfg.bf16_rounding)
        # fused: one kernel for the whole update, on CUDA and on the CPU (13-15 ms a step against 64-90 ms for
        # foreach on the demo's 22.7 M parameters, 2 cores; HF Trainer's default there); foreach elsewhere (MPS).
        fused = {"fused": True} if device_type in ("cuda", "cpu") else accel
        return lambda groups: torch.optim.AdamW(groups, **common, **fused)
    if kind == "adamw8bit":
        return _adamw8bit_factory(common, device_type, bf16_weights)
    if kind == "adamw4bit":
        return _adamw4bit_factory(common, device_type, bf16_weights)
    if kind == "adafactor":
        from transformers.optimization import Adafactor
        # Our schedule sets the LR, so Adafactor's own relative step and parameter scaling are off.
        # beta1=None keeps no first moment: Adafactor's point is the memory it saves.
        return lambda groups: Adafactor(groups, lr=cfg.lr, scale_parameter=False, relative_step=False,
                                        warmup_init=False, beta1=None, weight_decay=cfg.weight_decay)
    if kind == "sgd":
        # torch's SGD adds weight decay to the gradient (coupled); with momentum this differs slightly
        # from AdamW's decoupled decay.
        return lambda groups: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.beta1,
                                              weight_decay=cfg.weight_decay, **accel)
    raise ConfigError("optim.optimizer", f"{kind!r} is not one of adamw, adamw8bit, adamw4bit, adafactor, sgd")


def _adamw8bit_factory(common: dict, device_type: str, bf16_weights: bool):
    """8-bit AdamW states (blockwise-quantised moments, ~2 bytes per parameter instead of 4 or 8).

    FT Studio's own first (train/fp8_state_adamw.py: FP8 moments, stochastic rounding of moments and bf16 weights,
    a Triton kernel on FP8-capable GPUs, torch on any other device); torchao's (stochastic rounding of bf16
    weights) or bitsandbytes' only where ours cannot import. Which one runs is memory.lowbit's decision, the one
    the plan takes too; none usable stops the run here with why (never full AdamW states instead, unsaid)."""
    library, cls = _lowbit_class("adamw8bit")
    if library == "ftstudio":
        return lambda groups: cls(groups, **common)
    if device_type != "cuda":
        raise ConfigError("optim.optimizer",
                          f"adamw8bit through {library} needs a CUDA GPU; use adamw on {device_type}")
    if library == "torchao":
        return lambda groups: cls(groups, **common, bf16_stochastic_round=bf16_weights)
    return lambda groups: cls(groups, **common)


def _adamw4bit_factory(common: dict, device_type: str, bf16_weights: bool):
    """4-bit AdamW states (torchao: blockwise 4-bit codes, one fp32 scale per 128 values, ~1.06 bytes per
    parameter for both moments): what lets a 32B-parameter model's optimizer sit beside its bf16 weights on
    one 141 GB card. Tensors under 4096 values keep plain states."""
    if device_type != "cuda":
        raise ConfigError("optim.optimizer", f"adamw4bit needs a CUDA GPU; use adamw on {device_type}")
    _, cls = _lowbit_class("adamw4bit")
    return lambda groups: cls(groups, **common, bf16_stochastic_round=bf16_weights)


def _lowbit_class(kind: str):
    from ftstudio.engine.memory.lowbit import lowbit_library, optimizer_class

    found = lowbit_library(kind, probe=True)
    if not found.usable:
        raise ConfigError("optim.optimizer", found.problem())
    return optimizer_class(kind)


# -- AdamW for bf16 weights ------------------------------------------------------------------------
def stochastic_round_bf16(x: torch.Tensor) -> torch.Tensor:
    """fp32 → bf16, rounding up or down with probability proportional to the distance (unbiased: E[r(x)] = x).

    bf16 is the top 16 bits of fp32: add uniform noise to the 16 bits that are dropped, then truncate.
    """
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class ClippedInStep(torch.optim.Optimizer):
    """An optimizer that applies gradient clipping's factor inside its own update: :meth:`clip_in_step` measures
    the norm and keeps the factor, the next :meth:`step` takes it (:meth:`_take_scale`) and multiplies each
    gradient as it reads it, instead of a pass that rewrites every gradient first."""
    _grad_scale: torch.Tensor | None = None

    def clip_in_step(self, params, max_norm: float) -> torch.Tensor:
        """clip_grad_norm_ with the multiply left to the next :meth:`step`: the same total norm and factor
        (max_norm / (norm + 1e-6), at most 1). Returns the norm."""
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
        self._grad_scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0).float()
        return norm

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._grad_scale = None                           # a skipped step's factor is not the next one's
        super().zero_grad(set_to_none=set_to_none)

    def _take_scale(self) -> torch.Tensor | None:
        scale, self._grad_scale = self._grad_scale, None
        return scale

    @staticmethod
    def _closure(closure):
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()


class CompensatedAdamW(ClippedInStep):
    """AdamW for weights stored in bf16, with the arithmetic in fp32 and bf16 moments.

    A bf16 weight near 1 moves in steps of 2^-8 ≈ 0.004; an update of lr·(m/√v) ≈ 2e-5 rounds to nothing, so
    naive bf16 AdamW stops learning at fine-tuning rates. ``rounding="kahan"`` keeps, per weight, a bf16
    buffer of what rounding dropped and adds it to the next update (Kahan summation; 2 more bytes per
    parameter); ``"stochastic"`` rounds the new weight up or down at random, unbiased, with no buffer;
    ``"nearest"`` is plain bf16 (for comparison). fp32 parameters are updated exactly (no compensation).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *, rounding="kahan",
                 foreach: bool = True, kernel: bool = True):
        if rounding not in ("kahan", "stochastic", "nearest"):
            raise ValueError(f"rounding {rounding!r} is not one of kahan, stochastic, nearest")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.rounding = rounding
        # foreach: all tensors of a (device, dtype) bucket updated by multi-tensor ops (_adamw_update_foreach);
        # False: one tensor at a time (compiled per shape on CUDA): the reference the multi-tensor path equals.
        self.foreach = foreach
        # kernel: on one CUDA device, a bucket of contiguous bf16 tensors without Kahan buffers is updated by the
        # Triton kernel (adamw_kernel: one fused pass per tensor, no compile); False keeps the compiled path.
        self.kernel = kernel
        self._grad_scale: torch.Tensor | None = None     # clipping's factor, applied by the next step

    # clip_in_step (ClippedInStep): the Triton kernel multiplies each gradient by the factor as it reads it, instead
    # of a pass that rewrites every gradient first (11 ms of a 397 ms Llama-3-8B step on the H200); the other paths
    # multiply the gradients first, as clip_grad_norm_ does.

    def _scale_grads(self, grads: list, scale) -> None:
        if grads:
            torch._foreach_mul_(grads, scale.to(grads[0].device, grads[0].dtype))

    def _state(self, p):
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if self.rounding == "kahan" and p.dtype != torch.float32:
                state["compensation"] = torch.zeros_like(p)
        elif state["step"].device != p.device:     # a checkpoint loaded with map_location="cpu"
            state["step"] = state["step"].to(p.device)
        return state

    def _step_foreach(self, stochastic: bool, scale) -> None:
        for gi, group in enumerate(self.param_groups):
            (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
            buckets: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is not None:
                    state = self._state(p)
                    key = (p.device, p.dtype, "compensation" in state)
                    buckets.setdefault(key, []).append((p, state))
            sr_step = group["sr_step"] = group.get("sr_step", 0) + 1    # saved with the groups: resumes exact
            for (device, dtype, _), items in buckets.items():
                lr = torch.full((), float(group["lr"]), dtype=torch.float32, device=device)
                seed = _noise_seed(sr_step, gi)
                if self.kernel and self._kernel_step(items, lr, b1, b2, eps, wd, stochastic, seed, scale):
                    continue
                if scale is not None:
                    self._scale_grads([_local(p.grad) for p, _ in items], scale)
                for chunk in _chunks(items):
                    ps = [_local(p) for p, _ in chunk]
                    steps = [st["step"] for _, st in chunk]
                    torch._foreach_add_(steps, 1.0)
                    comps = [_local(st["compensation"]) for _, st in chunk] if "compensation" in chunk[0][1] else None
                    args = (ps, [_local(p.grad) for p, _ in chunk], [_local(st["exp_avg"]) for _, st in chunk],
                            [_local(st["exp_avg_sq"]) for _, st in chunk], comps, steps, lr, b1, b2, eps, wd,
                            stochastic and dtype == torch.bfloat16)
                    if device.type != "cuda":
                        _adamw_update_foreach(*args)
                        continue
                    try:   # one compiled graph per chunk layout (chunks of identical blocks share it)
                        _compiled_update(foreach=True)(*args)
                    except Exception as e:  # noqa: BLE001 - compiling failed before any write: eager from now
                        global _COMPILED_FOREACH
                        _COMPILED_FOREACH = _adamw_update_foreach
                        warnings.warn(f"compiling the multi-tensor bf16 AdamW update failed ({type(e).__name__}: "
                                      f"{str(e)[:200]}); updating with eager multi-tensor ops")
                        _adamw_update_foreach(*args)

    def _kernel_step(self, items, lr, b1, b2, eps, wd, stochastic: bool, seed: int, scale=None) -> bool:
        """The whole bucket through the Triton kernel (adamw_kernel) when it can take it; False: the other paths."""
        dist = torch.distributed
        if ("compensation" in items[0][1] or items[0][0].device.type != "cuda"
                or (dist.is_available() and dist.is_initialized())):   # FSDP keeps the path #19 measured there
            return False
        from ftstudio.engine.train import adamw_kernel

        lists = ([_local(p) for p, _ in items], [_local(p.grad) for p, _ in items],
                 [_local(st["exp_avg"]) for _, st in items], [_local(st["exp_avg_sq"]) for _, st in items])
        if not adamw_kernel.available() or not adamw_kernel.fits(*lists):
            return False
        steps = [st["step"] for _, st in items]
        torch._foreach_add_(steps, 1.0)
        try:
            adamw_kernel.update(*lists, steps, lr, b1, b2, eps, wd, stochastic=stochastic, seed=seed,
                                grad_scale=scale)
        except Exception as e:  # noqa: BLE001 - the kernel failed to build or launch, before any write
            torch._foreach_sub_(steps, 1.0)
            self.kernel = False
            warnings.warn(f"the Triton bf16 AdamW kernel failed ({type(e).__name__}: {str(e)[:200]}); "
                          "updating with the compiled multi-tensor path")
            return False
        return True

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        stochastic = self.rounding == "stochastic"
        scale = self._take_scale()
        if self.foreach:
            self._step_foreach(stochastic, scale)
            return loss
        if scale is not None:
            self._scale_grads([_local(p.grad) for g in self.param_groups for p in g["params"] if p.grad is not None],
                              scale)
        for group in self.param_groups:
            (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
            lrs: dict[torch.device, torch.Tensor] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                # The LR and step count live on the parameter's device as tensors: no recompile when the LR
                # changes, and no host→device copy per tensor (a copy from pageable memory waits for the
                # stream: two per tensor stalled the GPU between every update).
                if p.device not in lrs:
                    lrs[p.device] = torch.full((), float(group["lr"]), dtype=torch.float32, device=p.device)
                lr = lrs[p.device]
                state = self._state(p)
                state["step"] += 1
                fn = _compiled_update() if p.is_cuda else _adamw_update
                comp = state.get("compensation")
                # Elementwise on each rank's shard: FSDP2's DTensors are updated through their local tensors.
                fn(_local(p), _local(p.grad), _local(state["exp_avg"]), _local(state["exp_avg_sq"]),
                   None if comp is None else _local(comp), state["step"], lr, b1, b2, eps, wd,
                   stochastic and p.dtype == torch.bfloat16)
        return loss


def _noise_seed(sr_step: int, group: int) -> int:
    """Stochastic rounding's seed for one step of one group: from the run's seed, the step and the rank, so a
    resumed run (the step count is in the saved param groups) draws what an unbroken run would."""
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return hash((torch.initial_seed(), sr_step, group, rank)) & 0x3FFFFFFF


FOREACH_CHUNK = 1 << 27   # values per multi-tensor call: bounds the fp32 temporaries (~0.5 GB each)


def _chunks(items: list) -> list[list]:
    out, cur, n = [], [], 0
    for item in items:
        size = item[0].numel()
        if cur and n + size > FOREACH_CHUNK:
            out.append(cur)
            cur, n = [], 0
        cur.append(item)
        n += size
    return out + ([cur] if cur else [])


def _adamw_update_foreach(ps, grads, exp_avgs, exp_avg_sqs, comps, steps, lr, b1: float, b2: float, eps: float,
                          wd: float, stochastic: bool) -> None:
    """:func:`_adamw_update` for a list of tensors at once (torch._foreach_* multi-tensor kernels): the same
    arithmetic in the same order, so the result equals the per-tensor update (and the same noise draws, tensor
    by tensor, for stochastic rounding)."""
    g = [t.float() for t in grads]
    w = [t.float() for t in ps]
    m = torch._foreach_lerp([t.float() for t in exp_avgs], g, 1 - b1)
    v = torch._foreach_mul([t.float() for t in exp_avg_sqs], b2)
    torch._foreach_add_(v, torch._foreach_mul(torch._foreach_mul(g, 1 - b2), g))   # not addcmul: no FMA
    torch._foreach_copy_(exp_avgs, m)
    torch._foreach_copy_(exp_avg_sqs, v)
    del g
    bc1 = torch._foreach_add(torch._foreach_neg(torch._foreach_pow(b1, steps)), 1)   # 1 − b1^t, on the device
    bc2 = torch._foreach_sqrt(torch._foreach_add(torch._foreach_neg(torch._foreach_pow(b2, steps)), 1))
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), bc2), eps)
    del v
    upd = torch._foreach_div(torch._foreach_div(m, bc1), denom)
    del m, denom
    torch._foreach_add_(upd, torch._foreach_mul(w, wd))
    delta = torch._foreach_mul(upd, -lr)
    del upd
    if comps is not None:
        torch._foreach_add_(delta, [c.float() for c in comps])
    new = torch._foreach_add(w, delta)
    del delta, w
    for i, (p, x) in enumerate(zip(ps, new)):
        rounded = stochastic_round_bf16(x) if stochastic else x.to(p.dtype)
        if comps is not None:
            comps[i].copy_(x - rounded.float())
        p.copy_(rounded)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _adamw_update(p, grad, exp_avg, exp_avg_sq, comp, step, lr, b1: float, b2: float, eps: float, wd: float,
                  stochastic: bool) -> None:
    """One AdamW update of one tensor in fp32, written back to its (bf16) storage; see CompensatedAdamW."""
    g = grad.float()
    w = p.float()
    m = exp_avg.float().lerp(g, 1 - b1)
    v = exp_avg_sq.float() * b2 + (1 - b2) * g * g
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    denom = v.sqrt() / torch.sqrt(1 - b2 ** step) + eps
    delta = -lr * (m / (1 - b1 ** step) / denom + wd * w)   # decoupled decay: −lr·wd·w
    if comp is not None:
        delta = delta + comp.float()                 # what earlier roundings dropped (Kahan)
    new = w + delta
    rounded = stochastic_round_bf16(new) if stochastic else new.to(p.dtype)
    if comp is not None:
        comp.copy_(new - rounded.float())            # intended − stored: exact in fp32 at these magnitudes
    p.copy_(rounded)


_COMPILED = None
_COMPILED_FOREACH = None


def _compiled_update(foreach: bool = False):
    """The update compiled once per tensor shape (one fused kernel instead of ~15): the optimizer step of a
    bf16 model is memory-bound, and eager temporaries would cost as much as the update itself."""
    global _COMPILED, _COMPILED_FOREACH
    if foreach:
        if _COMPILED_FOREACH is None:
            from torch._inductor import config as inductor_config
            _COMPILED_FOREACH = (torch.compile(_adamw_update_foreach, dynamic=False,
                                               options={"emulate_precision_casts": True})
                                 if hasattr(inductor_config, "emulate_precision_casts") else _adamw_update_foreach)
        return _COMPILED_FOREACH
    if _COMPILED is None:
        # emulate_precision_casts: without it inductor fuses `new.to(bf16).float()` into `new`, so the Kahan
        # remainder `new - rounded` is always 0 and the compiled update is plain bf16 AdamW, which stops
        # learning at fine-tuning rates (seen on the H200: "Fastest" trailed the reference preset).
        from torch._inductor import config as inductor_config

        if not hasattr(inductor_config, "emulate_precision_casts"):  # an older torch: exact beats fast
            _COMPILED = _adamw_update
        else:
            _COMPILED = torch.compile(_adamw_update, dynamic=False, options={"emulate_precision_casts": True})
    return _COMPILED


def describe_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """One row per param group for display: name, peak lr, weight decay, parameter count."""
    return [{"name": g.get("name", str(i)), "lr": g["lr"], "weight_decay": g.get("weight_decay", 0.0),
             "params": sum(p.numel() for p in g["params"])} for i, g in enumerate(optimizer.param_groups)]
