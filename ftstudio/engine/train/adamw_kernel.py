"""A Triton kernel for the bf16 AdamW step: one fused read-update-write pass per tensor, near the memory roofline.

The update of a bf16 model is memory-bound: per parameter it reads weight, gradient and both moments (8 bytes)
and writes weight and moments (6 bytes); at 8 B parameters that is 112 GB, about 23 ms at an H200's 4.8 TB/s.
Measured there (tests/benchmarks/results/adamw_kernel_h200.jsonl): the compiled multi-tensor update
(optim._adamw_update_foreach under torch.compile) took 7.5 ms a step on Llama-3.2-1B's tensors after a 55.6 s
first step (compiling); this kernel 6.8 ms after a 1.0 s first step, and 37.9 ms on Llama-3-8B's (2.97 TB/s;
torch's fused bf16 AdamW, which rounds to nearest, 41.7 ms). Same arithmetic as :func:`optim._adamw_update`, in
fp32, with the same stochastic rounding (uniform noise on the 16 dropped bits, then truncation), one launch per
tensor (see MODE for the one-launch variant over a table of addresses, which measured slower).

The noise comes from Philox keyed by (seed, tensor, element), where the seed is derived from the run's seed and
a step counter the optimizer keeps in its param group: a resumed run draws the same noise as an unbroken one.
Imported only on CUDA with Triton present (:func:`available`); everything else uses optim's paths.
"""
from __future__ import annotations

import functools

import torch

BLOCK = 2048


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:   # noqa: BLE001 - no triton, or a broken install: the compiled path is used
        return False
    return torch.cuda.is_available()


@functools.cache
def _kernels():
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    @triton.jit
    def _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, lr_ptr, c_ptr, offs, n, seed, b1, b2, eps, wd,
                     STOCHASTIC: tl.constexpr):
        mask = offs < n
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(c_ptr)   # clipping's factor
        w = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lr = tl.load(lr_ptr)
        step = tl.load(s_ptr)
        m = m + (1.0 - b1) * (g - m)                    # torch.lerp for a weight below 0.5
        v = v * b2 + ((1.0 - b2) * g) * g
        bc1 = 1.0 - libdevice.pow(b1, step)
        bc2 = libdevice.sqrt(1.0 - libdevice.pow(b2, step))
        denom = libdevice.sqrt(v) / bc2 + eps
        new = w + (-lr) * (m / bc1 / denom + wd * w)    # decoupled decay
        if STOCHASTIC:
            noise = (tl.randint(seed, offs.to(tl.int32)) & 0xFFFF).to(tl.int32)
            bits = new.to(tl.int32, bitcast=True)
            new = ((bits + noise) & -65536).to(tl.float32, bitcast=True)   # exact in bf16 from here
        tl.store(p_ptr + offs, new.to(tl.bfloat16), mask=mask)
        tl.store(m_ptr + offs, m.to(tl.bfloat16), mask=mask)
        tl.store(v_ptr + offs, v.to(tl.bfloat16), mask=mask)

    @triton.jit
    def adamw_multi(ptrs, block_tensor, block_start, sizes, lr_ptr, c_ptr, seed, b1, b2, eps, wd,
                    n_tensors, STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(block_tensor + pid)
        start = tl.load(block_start + pid)
        n = tl.load(sizes + t)
        p_ptr = tl.multiple_of(tl.load(ptrs + t).to(tl.pointer_type(tl.bfloat16)), 16)
        g_ptr = tl.multiple_of(tl.load(ptrs + n_tensors + t).to(tl.pointer_type(tl.bfloat16)), 16)
        m_ptr = tl.multiple_of(tl.load(ptrs + 2 * n_tensors + t).to(tl.pointer_type(tl.bfloat16)), 16)
        v_ptr = tl.multiple_of(tl.load(ptrs + 3 * n_tensors + t).to(tl.pointer_type(tl.bfloat16)), 16)
        s_ptr = tl.load(ptrs + 4 * n_tensors + t).to(tl.pointer_type(tl.float32))
        offs = tl.max_contiguous(tl.multiple_of(start + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, lr_ptr, c_ptr, offs, n, seed + t, b1, b2, eps, wd,
                     STOCHASTIC)

    @triton.jit
    def adamw_one(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, lr_ptr, c_ptr, n, seed, b1, b2, eps, wd,
                  STOCHASTIC: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        _adamw_block(p_ptr, g_ptr, m_ptr, v_ptr, s_ptr, lr_ptr, c_ptr, offs, n, seed, b1, b2, eps, wd, STOCHASTIC)

    return adamw_multi, adamw_one


@functools.lru_cache(maxsize=64)
def _layout(sizes: tuple[int, ...], device: torch.device, block: int):
    """Per block: which tensor, and the first element; built once per bucket layout."""
    tensor_of, start_of = [], []
    for i, n in enumerate(sizes):
        k = -(-n // block)
        tensor_of += [i] * k
        start_of += range(0, k * block, block)
    return (torch.tensor(tensor_of, dtype=torch.int32, device=device),
            torch.tensor(start_of, dtype=torch.int64, device=device),
            torch.tensor(sizes, dtype=torch.int64, device=device))


@functools.lru_cache(maxsize=8)
def _ones(device: torch.device) -> torch.Tensor:
    return torch.ones(1, dtype=torch.float32, device=device)


def fits(ps, grads, exp_avgs, exp_avg_sqs) -> bool:
    """The kernel takes contiguous bf16 tensors on one CUDA device (weights, gradients and both moments)."""
    return all(t.is_cuda and t.dtype == torch.bfloat16 and t.is_contiguous() and t.data_ptr() % 16 == 0
               for group in (ps, grads, exp_avgs, exp_avg_sqs) for t in group)


# "per-tensor": one launch per tensor, blocks of BLOCK (2048) values, BIG_BLOCK (4096) from BIG values up; "multi":
# one launch per bucket over a table of addresses. On the H200 (tests/benchmarks/adamw_kernel_gpu.py) per-tensor
# ran at 2.5-3.0 TB/s (6.8 ms for Llama-3.2-1B's tensors, 37.9 ms for Llama-3-8B's, torch's fused bf16 AdamW 6.5 and
# 41.7 ms), "multi" at 2.0 TB/s: loaded addresses hide their alignment from Triton, so its loads do not vectorise.
MODE = "per-tensor"
BIG_BLOCK, BIG = 4096, 1 << 25


def update(ps, grads, exp_avgs, exp_avg_sqs, steps, lr: torch.Tensor, b1: float, b2: float, eps: float, wd: float,
           *, stochastic: bool, seed: int, grad_scale: torch.Tensor | None = None) -> None:
    """AdamW on every tensor of the lists (steps already incremented, as in optim). ``grad_scale``: a one-element
    fp32 tensor every gradient is multiplied by as it is read (gradient clipping's factor: the gradients are not
    rewritten first, a pass that took 11 ms of a 397 ms Llama-3-8B step on the H200)."""
    multi, one = _kernels()
    c = _ones(lr.device) if grad_scale is None else grad_scale.to(torch.float32).reshape(1)
    seed &= 0x3FFFFFFF
    if MODE == "per-tensor":
        for i, (p, g, m, v, s) in enumerate(zip(ps, grads, exp_avgs, exp_avg_sqs, steps)):
            n = p.numel()
            block = BIG_BLOCK if n >= BIG else BLOCK
            one[(-(-n // block),)](p, g, m, v, s, lr, c, n, seed + i, b1, b2, eps, wd, STOCHASTIC=stochastic,
                                   BLOCK=block, num_warps=8)
        return
    device = ps[0].device
    tensor_of, start_of, sizes = _layout(tuple(p.numel() for p in ps), device, BLOCK)
    table = torch.tensor([t.data_ptr() for group in (ps, grads, exp_avgs, exp_avg_sqs, steps) for t in group],
                         dtype=torch.int64).pin_memory().to(device, non_blocking=True)
    multi[(tensor_of.numel(),)](table, tensor_of, start_of, sizes, lr, c, seed, b1, b2, eps, wd, len(ps),
                                STOCHASTIC=stochastic, BLOCK=BLOCK, num_warps=8)
