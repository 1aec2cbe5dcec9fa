"""What a CUDA step does differently from the CPU, for a plan of a CUDA step traced on fake CPU tensors
(trace.py): CUDA autocast's fp32 ops, the fused attention kernels' dropout, fp32 grouped-query attention on the
math kernel, dropout's bool mask, fp32 grouped matmuls of mixture-of-experts layers, and one document per row in
transformers' mask logic. Each rule was checked against real CUDA tensors counted by the same tracker (trace.LiveBytes) on an H100."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

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


class CudaAutocastRules(TorchFunctionMode):
    """What CUDA does differently from the CPU, for a plan of a CUDA step traced on the CPU: under autocast the
    ops that CUDA's autocast runs in fp32 run in fp32 here too; fp32 grouped-query SDPA goes to the math kernel
    as on CUDA (its fused kernels take no fp32 GQA); SDPA's dropout is applied inside the fused kernel.
    ``low``: the autocast dtype of the run (also inside checkpoint recomputes, whose autocast state differs)."""

    def __init__(self, low: torch.dtype | None = None):
        super().__init__()
        self.low = low

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
        if func is _F.dropout:
            dropped = _fused_dropout(args, kwargs)
            if dropped is not None:
                return dropped
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


def _fused_dropout(args, kwargs):
    """Dropout as CUDA runs it (aten::dropout takes the fused ``native_dropout`` on CUDA): the output and a bool
    mask (one byte a value) saved for backward. The CPU's composite keeps a noise tensor of the input's dtype
    (two bytes a value in bf16, four in fp32) and its product. None where nothing is dropped or it is in place."""
    names = ("input", "p", "training", "inplace")
    kw = dict(zip(names, args))
    kw.update({k: v for k, v in kwargs.items() if k in names})
    x, p = kw.get("input"), float(kw.get("p", 0.5))
    if not isinstance(x, torch.Tensor) or not kw.get("training", True) or kw.get("inplace") or not 0 < p < 1:
        return None
    return torch.native_dropout(x, p, True)[0]


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


def _grouped_shape(a, b, offs):
    if a.dim() == 2 and b.dim() == 3:
        return (a.shape[0], b.shape[-1])
    if a.dim() == 3 and b.dim() == 3:
        return (a.shape[0], a.shape[1], b.shape[-1])
    if a.dim() == 2 and b.dim() == 2 and offs is not None:
        return (offs.shape[0], a.shape[0], b.shape[-1])
    return None


def fp32_grouped_mm(func, args, kwargs):
    """The output of an fp32 ``_grouped_mm`` (mixture-of-experts layers) on fake tensors, else None: CUDA runs it
    in fp32 (autocast leaves it alone), while its fake-tensor rule takes bf16 only. Called below autograd (in the
    tracker's dispatch), so its saved inputs and its backward's grouped matmuls are those of CUDA."""
    if func is not _GROUPED_MM or len(args) < 2:
        return None
    a, b = args[0], args[1]
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    if a.dtype != torch.float32 or b.dtype != torch.float32 or not _fake(a):
        return None
    shape = _grouped_shape(a, b, offs)
    return a.new_empty(shape) if shape is not None else None


_GROUPED_MM = getattr(getattr(torch.ops.aten, "_grouped_mm", None), "default", None)


def _fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)


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


def unpacked_rows():
    """transformers looks for packed documents in the position ids; on fake tensors it cannot read them and
    assumes packing, building a dense (B, 1, S, S) mask that the real run (one document a row) never makes. The
    traced rows are one document each: say so. Packed rows are planned as full rows (flex / cuDNN masks)."""
    from unittest import mock

    try:
        from transformers import masking_utils
    except ImportError:
        return nullcontext()
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return nullcontext()
    return mock.patch.object(masking_utils, "find_packed_sequence_indices", lambda *a, **k: None)
