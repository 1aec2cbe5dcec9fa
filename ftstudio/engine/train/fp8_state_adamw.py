"""AdamW with 8-bit moments (``optim.optimizer: adamw8bit``, FT Studio's own): both moments in FP8 (e4m3) with one
fp32 scale per block of 256 values, 2.03 bytes per parameter instead of 4 (bf16 states) or 8 (fp32), updated by one
Triton pass per tensor on FP8-capable GPUs (compute capability 8.9+) and by the same arithmetic in torch elsewhere
(other GPUs, the CPU, the planner's fake tensors).

Why our own: the 10.7 GB budget of issue 33 (Unsloth's checkpointed full fine-tuning of a 1B model) needs the
optimizer state small *and* the step fast. torchao's AdamW8bit halved the step's speed on the H100 (a compiled
function per tensor through a tensor subclass), bitsandbytes' rounds bf16 weights to nearest, which drops most
small updates (96 % of a first step's on the H100). Here:

* the second moment is stored as its square root r = √v, so e4m3's range (2⁻⁹ … 448 of the block's largest)
  covers the squares of gradients 2¹⁸ apart; ``denom = r / √(1 − β₂ᵗ) + ε`` as in AdamW;
* both moments are rounded to e4m3 stochastically (uniform noise on the 20 dropped fp32 mantissa bits, then
  truncation): β₂ = 0.999 moves v by 0.1 % a step, far below e4m3's 6 % spacing, so rounding to nearest would
  freeze it; stochastic rounding keeps every moment unbiased;
* bf16 weights are rounded stochastically too (as :class:`optim.CompensatedAdamW` does), fp32 weights exactly.

The noise comes from Philox (the kernel) or torch's generator (the torch path), seeded from the run's seed, the
step and the group, as CompensatedAdamW's: a resumed run draws what an unbroken one would on the same path.
The two paths agree exactly with stochastic rounding off (``stochastic=False``, tests) and in distribution with it.
"""
from __future__ import annotations

import functools
import math
import warnings

import torch

from ftstudio.engine.train.optim import ClippedInStep, _noise_seed

QBLOCK = 256                 # values per scale
FP8_MAX = 448.0              # e4m3fn's largest finite value
GROUPS = 8                   # scale blocks per kernel program (2048 values)
STATE_BYTES = 2              # per value: one byte per moment (plus 8 bytes of scales per QBLOCK values)


def state_bytes(n: int) -> int:
    """Bytes of this optimizer's state for a tensor of ``n`` values (the planner's figure: two FP8 moments, two
    fp32 scales per 256 values, the fp32 step count)."""
    return STATE_BYTES * n + 8 * math.ceil(n / QBLOCK) + 4


class Fp8StateAdamW(ClippedInStep):
    """AdamW (decoupled weight decay, bias-corrected) with FP8 moments; see the module docstring.

    State per parameter: ``step`` (fp32 scalar tensor), ``exp_avg`` and ``exp_avg_sqrt`` (float8_e4m3fn, the
    parameter's shape), ``exp_avg_scale`` and ``exp_avg_sqrt_scale`` (fp32, one per 256 values of the flattened
    tensor). ``stochastic=False`` rounds to nearest everywhere (tests of the two paths against each other)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *,
                 stochastic: bool = True, kernel: bool = True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.stochastic = stochastic
        self.kernel = kernel

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader casts every floating-point state to its parameter's dtype: that would turn the FP8
        moments into bf16 (twice the memory, and the kernel reads them as FP8) and round the fp32 scales to
        bf16. The saved tensors go back with their own dtypes."""
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            saved = state_dict["state"].get(i)
            if saved:
                device = _local(p).device
                self.state[p].update({k: v.to(device) for k, v in saved.items() if torch.is_tensor(v) and k != "step"})

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            local = _local(p)
            blocks = math.ceil(local.numel() / QBLOCK)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            for name in ("exp_avg", "exp_avg_sqrt"):
                state[name] = torch.zeros(local.shape, dtype=torch.float8_e4m3fn, device=local.device)
                state[name + "_scale"] = torch.zeros(blocks, dtype=torch.float32, device=local.device)
        elif state["step"].device != p.device:     # a checkpoint loaded with map_location="cpu"
            for k, v in state.items():
                state[k] = v.to(p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._closure(closure)
        scale = self._take_scale()
        for gi, group in enumerate(self.param_groups):
            (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
            sr_step = group["sr_step"] = group.get("sr_step", 0) + 1    # saved with the groups: resumes exact
            seed = _noise_seed(sr_step, gi)
            lrs: dict[torch.device, torch.Tensor] = {}
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                if p.device not in lrs:
                    lrs[p.device] = torch.full((), float(group["lr"]), dtype=torch.float32, device=p.device)
                args = (_local(p), _local(p.grad), state, lrs[p.device], b1, b2, eps, wd,
                        (seed + 7919 * i) & 0x3FFFFFFF, scale)
                if self.kernel:
                    try:
                        if _kernel_step(*args, stochastic=self.stochastic):
                            continue
                    except Exception as e:  # noqa: BLE001 - the kernel failed to build or launch, before any write
                        self.kernel = False
                        warnings.warn(f"the Triton FP8-state AdamW kernel failed ({type(e).__name__}: "
                                      f"{str(e)[:200]}); updating with its torch path")
                reference_update(*args, stochastic=self.stochastic)
        return loss


def _local(t: torch.Tensor) -> torch.Tensor:
    """An FSDP2 DTensor's local shard (the update is elementwise and blockwise on it); a plain tensor as is."""
    return t.to_local() if hasattr(t, "to_local") else t


# -- the torch path ---------------------------------------------------------------------------------------------------
def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """FP8 values × their block's scale, fp32, the tensor's shape."""
    n = q.numel()
    flat = q.reshape(-1).to(torch.float32)
    pad = scale.numel() * QBLOCK - n
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return (flat.view(-1, QBLOCK) * scale[:, None]).reshape(-1)[:n].view(q.shape)


def quantize(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor | None) -> None:
    """Write fp32 ``x`` into ``q`` (float8_e4m3fn) and ``scale`` (one per 256 values: the block's |x| max / 448).
    ``noise``: int32 values in [0, 2²⁰) added to the 20 mantissa bits e4m3 drops, before truncation (stochastic
    rounding); None rounds to nearest."""
    n = x.numel()
    flat = x.reshape(-1)
    pad = scale.numel() * QBLOCK - n
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    blocks = flat.view(-1, QBLOCK)
    amax = blocks.abs().amax(dim=1)
    s = amax / FP8_MAX
    y = torch.where(s[:, None] > 0, blocks / torch.where(s > 0, s, 1.0)[:, None], 0.0).clamp(-FP8_MAX, FP8_MAX)
    y = y.reshape(-1)[:n]
    if noise is not None:
        y = _round_stochastic(y, noise, 20)
    q.copy_(y.view(q.shape).to(torch.float8_e4m3fn))
    scale.copy_(s)


def _round_stochastic(y: torch.Tensor, noise: torch.Tensor, bits: int) -> torch.Tensor:
    """fp32 → fp32 with ``bits`` low mantissa bits zeroed after adding ``noise`` (magnitude rounded up with
    probability equal to the dropped fraction: unbiased)."""
    i = y.contiguous().view(torch.int32)
    return ((i + noise) & -(1 << bits)).view(torch.float32)


def _noise(n: int, seed: int, k: int, bits: int, device) -> torch.Tensor:
    g = torch.Generator(device=device if device.type != "meta" else "cpu")
    g.manual_seed(seed * 4 + k)
    return torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.int32, device=device)


CHUNK = 1 << 22              # values per pass of the torch path: bounds its fp32 temporaries (~170 MB)


def reference_update(p, grad, state, lr, b1, b2, eps, wd, seed, grad_scale, *, stochastic: bool) -> None:
    """One tensor's update in torch ops, CHUNK values at a time (whole blocks of 256) where the tensors are
    contiguous, so the fp32 temporaries stay small beside a 262 M-value embedding."""
    n = p.numel()
    flat = [p, grad, state["exp_avg"], state["exp_avg_sqrt"]]
    if n <= CHUNK or not all(t.is_contiguous() for t in flat):
        _update_part(p, grad, state["exp_avg"], state["exp_avg_scale"], state["exp_avg_sqrt"],
                     state["exp_avg_sqrt_scale"], state["step"], lr, b1, b2, eps, wd, seed, grad_scale, stochastic)
        return
    w, g, m, r = (t.view(-1) for t in flat)
    for k, start in enumerate(range(0, n, CHUNK)):
        part, blocks = slice(start, start + CHUNK), slice(start // QBLOCK, (start + CHUNK) // QBLOCK)
        _update_part(w[part], g[part], m[part], state["exp_avg_scale"][blocks], r[part],
                     state["exp_avg_sqrt_scale"][blocks], state["step"], lr, b1, b2, eps, wd,
                     (seed + 104729 * k) & 0x3FFFFFFF, grad_scale, stochastic)


def _update_part(p, grad, mq, ms, rq, rs, step, lr, b1, b2, eps, wd, seed, grad_scale, stochastic: bool) -> None:
    g = grad.to(torch.float32)
    if grad_scale is not None:
        g = g * grad_scale.to(g.device)
    m = dequantize(mq, ms)
    r = dequantize(rq, rs)
    m = m + (1.0 - b1) * (g - m)
    r = (r * r * b2 + (1.0 - b2) * g * g).sqrt()
    bc1 = 1.0 - b1 ** step
    bc2 = (1.0 - b2 ** step).sqrt()
    w = p.to(torch.float32)
    new = w - lr * (m / bc1 / (r / bc2 + eps) + wd * w)
    n, dev = p.numel(), p.device
    noise = (lambda k, bits: _noise(n, seed, k, bits, dev)) if stochastic else None  # noqa: E731   (flat)
    quantize(m, mq, ms, noise(1, 20) if noise else None)
    quantize(r, rq, rs, noise(2, 20) if noise else None)
    if p.dtype == torch.bfloat16 and noise:
        new = _round_stochastic(new.reshape(-1), noise(0, 16), 16).view(p.shape)
    p.copy_(new.to(p.dtype))


# -- the Triton path --------------------------------------------------------------------------------------------------
@functools.cache
def _capable(device_index: int) -> bool:
    """Triton with FP8 conversions: an NVIDIA GPU of compute capability 8.9 (Ada) or newer."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - no triton or a broken one: the torch path
        return False
    return torch.version.cuda is not None and torch.cuda.get_device_capability(device_index) >= (8, 9)


def _kernel_step(p, grad, state, lr, b1, b2, eps, wd, seed, grad_scale, *, stochastic: bool) -> bool:
    if not (p.is_cuda and _capable(p.device.index or 0) and p.dtype in (torch.bfloat16, torch.float32)
            and p.is_contiguous() and grad.is_contiguous() and grad.dtype == p.dtype):
        return False
    kernel = _kernel()
    n = p.numel()
    c = torch.ones(1, dtype=torch.float32, device=p.device) if grad_scale is None else \
        grad_scale.to(device=p.device, dtype=torch.float32).reshape(1)
    kernel[(math.ceil(n / (GROUPS * QBLOCK)),)](
        p, grad, state["exp_avg"], state["exp_avg_scale"], state["exp_avg_sqrt"], state["exp_avg_sqrt_scale"],
        state["step"], lr, c, n, seed, b1, b2, eps, wd, STOCHASTIC=stochastic, BF16=p.dtype == torch.bfloat16,
        GROUPS=GROUPS, QBLOCK=QBLOCK, num_warps=8)
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    @triton.jit
    def _quantize(x, q_ptr, s_ptr, offs, mask, blocks, nblocks, noise, STOCHASTIC: tl.constexpr):
        amax = tl.max(tl.abs(x), axis=1)
        s = amax / 448.0
        y = tl.where(s[:, None] > 0, x / tl.where(s > 0, s, 1.0)[:, None], 0.0)
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
        if STOCHASTIC:
            bits = y.to(tl.int32, bitcast=True)
            y = ((bits + (noise & 0xFFFFF).to(tl.int32)) & -1048576).to(tl.float32, bitcast=True)
        tl.store(q_ptr + offs, y.to(tl.float8e4nv), mask=mask)
        tl.store(s_ptr + blocks, s, mask=blocks < nblocks)

    @triton.jit
    def adamw_fp8(p_ptr, g_ptr, m_ptr, ms_ptr, r_ptr, rs_ptr, step_ptr, lr_ptr, c_ptr, n, seed, b1, b2, eps, wd,
                  STOCHASTIC: tl.constexpr, BF16: tl.constexpr, GROUPS: tl.constexpr, QBLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        blocks = pid * GROUPS + tl.arange(0, GROUPS)
        offs = blocks[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :]
        mask = offs < n
        nblocks = (n + QBLOCK - 1) // QBLOCK
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(c_ptr)
        w = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        bmask = blocks < nblocks
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(ms_ptr + blocks, mask=bmask,
                                                                                  other=0.0)[:, None]
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(rs_ptr + blocks, mask=bmask,
                                                                                  other=0.0)[:, None]
        lr = tl.load(lr_ptr)
        step = tl.load(step_ptr)
        m = m + (1.0 - b1) * (g - m)
        r = libdevice.sqrt(r * r * b2 + ((1.0 - b2) * g) * g)
        bc1 = 1.0 - libdevice.pow(b1, step)
        bc2 = libdevice.sqrt(1.0 - libdevice.pow(b2, step))
        new = w + (-lr) * (m / bc1 / (r / bc2 + eps) + wd * w)
        n0, n1, n2, n3 = tl.randint4x(seed, offs.to(tl.int32))
        _quantize(m, m_ptr, ms_ptr, offs, mask, blocks, nblocks, n1, STOCHASTIC)
        _quantize(r, r_ptr, rs_ptr, offs, mask, blocks, nblocks, n2, STOCHASTIC)
        if BF16:
            if STOCHASTIC:
                bits = new.to(tl.int32, bitcast=True)
                new = ((bits + (n0 & 0xFFFF).to(tl.int32)) & -65536).to(tl.float32, bitcast=True)
            tl.store(p_ptr + offs, new.to(tl.bfloat16), mask=mask)
        else:
            tl.store(p_ptr + offs, new, mask=mask)

    return adamw_fp8
