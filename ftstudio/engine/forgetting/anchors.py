"""The θ0 anchor: L2-SP and EWC penalties toward the pre-trained weights, the Fisher diagonal, and drift.

Choices, stated once:
  * The pull toward θ0 is a PENALTY ADDED TO THE LOSS (the seed's formula), not a decoupled update:
        L2-SP  λ/2 · ‖θ − θ0‖²                 (Li et al., 2018)
        EWC    λ/2 · Σ F_i (θ_i − θ0_i)²       (Kirkpatrick et al., 2017)
    Its gradient λ(θ−θ0) therefore goes through the optimizer like the task's gradient (Adam normalises
    it). The penalty is an autograd Function per weight that keeps no (θ−θ0) copy for the backward pass
    (it recomputes it there), so its only memory is θ0 (and F) themselves: ``nbytes``.
  * θ0 lives where the user chooses (``l2sp_anchor``): "gpu" = fp32 next to the weights (4 B/weight),
    "bf16" = next to the weights in bf16 (2 B/weight; θ0 is rounded to ~3 significant digits, so drift
    below ~1e-3 is rounding), "cpu" = fp32 in (pinned) host memory (0 B on the GPU; copied over each step).
    EWC's Fisher diagonal is stored the same way: another 4 or 2 B/weight.
  * The Fisher diagonal is the mean of squared per-example gradients of the model's own loss
    (``model(**batch).loss``) over ``ewc_batches`` batches, taken before training. For a causal LM the
    trainer passes general-text batches (:func:`general.general_batches`); for a classifier, which has no LM
    loss, it passes task batches and the Fisher measures what the pre-trained classifier relies on.
    F is then scaled to mean 1 over all weights, so ``ewc = λ`` pulls as hard on average as
    ``l2sp = λ``, only redistributed toward the weights that matter.
"""
from __future__ import annotations

import math
from itertools import islice
from typing import Callable, Iterable

import torch
from torch import nn

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.models.structure import layer_groups


def _clean(name: str) -> str:
    # torch.compile wraps blocks in OptimizedModule, which adds "_orig_mod." to parameter names.
    return name.replace("_orig_mod.", "")


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    # FSDP2 leaves the root's weights gathered after a forward without backward (an evaluation): reshard
    # first, so that every parameter is the sharded DTensor θ0's local shards belong to.
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()
    return {_clean(n): p for n, p in model.named_parameters() if p.requires_grad}


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 parameter (a DTensor), or the tensor itself on one device. θ0 and F are kept
    as local shards, so each rank holds 1/W of them; ``to_local`` is differentiable, and the penalty's gradient
    lands on the sharded gradient directly (it is each rank's own, so FSDP's averaging never touches it)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def _sum_over_ranks(values: list[float], like: torch.Tensor) -> list[float]:
    """Sums of local shards → sums over the whole model (all-reduced on the parameter's mesh when sharded)."""
    mesh = getattr(like, "device_mesh", None)
    if mesh is None:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=_local(like).device)
    dist.all_reduce(t, group=mesh.get_group())
    return t.tolist()


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# -- the penalty -----------------------------------------------------------------------------------
class _AnchorPull(torch.autograd.Function):
    """½ Σ w·(θ−θ0)² for one weight tensor, with w = l2sp + ewc·F. Saves only θ (no copy) for backward."""

    @staticmethod
    def forward(ctx, p, anchor, fisher, l2sp: float, ewc: float):
        ctx.save_for_backward(p)
        ctx.anchor, ctx.fisher, ctx.l2sp, ctx.ewc = anchor, fisher, l2sp, ewc
        d = p.detach().float() - anchor.to(p.device, torch.float32, non_blocking=True)
        return 0.5 * (_weight(d, fisher, l2sp, ewc) * d * d).sum()

    @staticmethod
    def backward(ctx, grad_out):
        (p,) = ctx.saved_tensors
        d = p.detach().float() - ctx.anchor.to(p.device, torch.float32, non_blocking=True)
        grad = grad_out * _weight(d, ctx.fisher, ctx.l2sp, ctx.ewc) * d
        return grad.to(p.dtype), None, None, None, None


def _weight(d: torch.Tensor, fisher, l2sp: float, ewc: float):
    if fisher is None:
        return l2sp
    return l2sp + ewc * fisher.to(d.device, torch.float32, non_blocking=True)


def _place(t: torch.Tensor, where: str) -> torch.Tensor:
    t = t.detach()
    if where == "gpu":
        return t.to(torch.float32, copy=True)
    if where == "bf16":
        return t.to(torch.bfloat16, copy=True)
    if where == "cpu":
        out = t.to("cpu", torch.float32, copy=True)
        return out.pin_memory() if t.is_cuda else out
    raise ConfigError("regularize.l2sp_anchor", f"{where!r} is not one of gpu, bf16, cpu")


class Regularizer:
    """θ0 (and the Fisher diagonal) kept for the penalty and the drift monitor."""

    def __init__(self, model: nn.Module, *, l2sp: float = 0.0, ewc: float = 0.0,
                 fisher: dict[str, torch.Tensor] | None = None, anchor: str = "gpu"):
        if ewc > 0 and fisher is None:
            raise ConfigError("regularize.ewc", "EWC needs a Fisher diagonal (estimate_fisher)")
        self.l2sp, self.ewc, self.anchor = float(l2sp), float(ewc), anchor
        params = _trainable(model)
        self._like = next(iter(params.values()))
        self.theta0 = {n: _place(_local(p), anchor) for n, p in params.items()}
        self.fisher = {n: _place(_local(fisher[n]), anchor) for n in params} if ewc > 0 else None
        self.groups = [(g, [_clean(n) for n in names]) for g, names in layer_groups(model)]
        with torch.no_grad():  # exact ‖θ0‖ per group, from the weights before any rounding
            sq = [sum(float(_local(params[n]).float().square().sum()) for n in names) for _, names in self.groups]
            self._norm0 = {g: math.sqrt(v) for (g, _), v in zip(self.groups, _sum_over_ranks(sq, self._like))}

    @property
    def active(self) -> bool:
        """Whether the penalty is non-zero (a drift-only regularizer adds nothing to the loss)."""
        return self.l2sp > 0 or self.ewc > 0

    @property
    def nbytes(self) -> int:
        """Bytes held for θ0 and F (wherever they live; see ``anchor``)."""
        tensors = list(self.theta0.values()) + (list(self.fisher.values()) if self.fisher else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """λ_l2sp/2·‖θ−θ0‖² + λ_ewc/2·Σ F(θ−θ0)²: a scalar to add to the loss (backward-able)."""
        params = _trainable(model)
        if not self.active:
            device = next(iter(params.values())).device
            return torch.zeros((), device=device, requires_grad=True)
        terms = [_AnchorPull.apply(_local(p), self.theta0[n], self.fisher[n] if self.fisher else None, self.l2sp, self.ewc)
                 for n, p in params.items() if n in self.theta0]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def drift(self, model: nn.Module) -> dict[str, float]:
        """Per layer group (bottom → top): ‖θ−θ0‖ / ‖θ0‖."""
        params = {n: _local(p) for n, p in _trainable(model).items()}
        sq = [sum(float((params[n].float() - self.theta0[n].to(params[n].device, torch.float32)).square().sum())
                  for n in names) for _, names in self.groups]
        return {g: math.sqrt(v) / max(self._norm0[g], 1e-12)
                for (g, _), v in zip(self.groups, _sum_over_ranks(sq, self._like))}

    def drift_metrics(self, model: nn.Module, step: int):
        """A DriftMetrics event: per-group drift and the whole model's ‖θ−θ0‖/‖θ0‖."""
        from ftstudio.core.events import DriftMetrics

        layers = self.drift(model)
        num = sum((layers[g] * self._norm0[g]) ** 2 for g in layers)
        den = sum(v * v for v in self._norm0.values())
        return DriftMetrics(step=step, layers=layers, total=math.sqrt(num / den) if den else 0.0)


def estimate_fisher(model: nn.Module, batches: Iterable[dict], *, progress: Callable[[int, int], None] | None = None
                    ) -> dict[str, torch.Tensor]:
    """Diagonal Fisher: mean over examples of the squared gradient of ``model(**row).loss``, scaled to mean 1.

    Each batch is split into single rows, so the squares are of per-example gradients (a batch's mean
    gradient would underestimate F). Dropout is off while measuring; gradients are cleared afterwards.
    """
    params = _trainable(model)
    device = next(iter(params.values())).device
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    batches = list(batches)
    total = sum(len(b["input_ids"]) for b in batches)
    was_training, count = model.training, 0
    model.eval()
    try:
        for batch in batches:
            for i in range(len(batch["input_ids"])):
                row = {k: v[i:i + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
                model.zero_grad(set_to_none=True)
                model(**to_device(row, device)).loss.backward()
                for n, p in params.items():
                    if p.grad is not None:
                        fisher[n].add_(p.grad.detach().float().square())
                count += 1
                if progress is not None:
                    progress(count, total)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise ConfigError("regularize.ewc_batches", "no batches to estimate the Fisher diagonal from")
    # Sharded (FSDP2): every rank scored the same rows, so each holds its shard of the same F; the mean is
    # summed over the shards.
    like = next(iter(params.values()))
    fisher = {n: _local(f) for n, f in fisher.items()}
    total, numel = _sum_over_ranks([sum(float(f.sum()) for f in fisher.values()),
                                    float(sum(f.numel() for f in fisher.values()))], like)
    mean = total / (count * numel)
    if not mean > 0 or not math.isfinite(mean):
        raise ConfigError("regularize.ewc", f"the Fisher estimate is {mean} (the loss gave no usable gradient)")
    return {n: f.div_(count * mean) for n, f in fisher.items()}


def build_regularizer(model: nn.Module, cfg: RunConfig, general_batches: Iterable[dict] | None = None,
                      *, progress: Callable[[int, int], None] | None = None) -> Regularizer | None:
    """The Regularizer ``cfg.regularize`` asks for, or None when no θ0 copy is needed.

    A θ0 copy is needed for L2-SP, EWC or a drift monitor (``drift_every`` > 0). For EWC pass
    ``general_batches`` (general text for a causal LM; task batches for a classifier); the first
    ``ewc_batches`` of them are used. Call it on the freshly loaded model, before any training step
    and before loading a checkpoint to resume: θ0 is the pre-trained weights.
    """
    r = cfg.regularize
    if r.l2sp == 0 and r.ewc == 0 and r.drift_every == 0:
        return None
    fisher = None
    if r.ewc > 0:
        if general_batches is None:
            raise ConfigError("regularize.ewc", "EWC needs batches to estimate the Fisher diagonal from")
        fisher = estimate_fisher(model, islice(general_batches, r.ewc_batches), progress=progress)
    return Regularizer(model, l2sp=r.l2sp, ewc=r.ewc, fisher=fisher, anchor=r.l2sp_anchor)
