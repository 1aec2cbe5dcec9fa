"""The optimizer step inside backward (``memory.optimizer_in_backward``).

:class:`OptimizerInBackward` — one optimizer per parameter, stepped from the parameter's post-accumulate-grad
hook (torch's documented "optimizer step in backward" pattern), then the gradient is freed: full gradients never
coexist. The global gradient norm is not known before the first parameter is updated, so ``grad_clip`` clips
each parameter's gradient to that norm on its own (documented in the class); a non-finite gradient is zeroed
for its tensor, since the step cannot wait.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch

from ftstudio.core.errors import ConfigError


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
        # The hooks hold this object weakly: a parameter's hook lives in torch's C++ side, where the garbage collector
        # cannot see the cycle parameter → hook → optimizer → parameter, so a bound method kept every finished run's
        # weights and optimizer state on the GPU for the life of the process (seen on the H100: each "Largest" run
        # of the benchmark carried all earlier ones, 12.7 GB of them under the Qwen3-1.7B row).
        me = weakref.ref(self)

        def hook(p: torch.Tensor) -> None:
            opt = me()
            if opt is not None:
                opt._hook(p)
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
                self._hooks.append(p.register_post_accumulate_grad_hook(hook))
        weakref.finalize(self, _remove, list(self._hooks))   # nothing left on the parameters once this is gone
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


def _remove(handles: list) -> None:
    for h in handles:
        h.remove()


def check_in_backward(precision: str) -> None:
    if precision == "fp16-mixed":
        raise ConfigError("memory.optimizer_in_backward", "cannot be combined with fp16-mixed (the loss-scaled "
                                                          "gradients would be applied unscaled); use bf16-mixed "
                                                          "or bf16")
