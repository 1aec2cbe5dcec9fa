"""The tracker of the tracer: the bytes of every storage alive while a step runs (real or fake tensors), rounded
as the CUDA caching allocator rounds its blocks."""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ftstudio.engine.memory.tracer import CUDA_BLOCK  # noqa: F401 - re-exported beside the tracker
from ftstudio.engine.memory.tracer.rules import fp32_grouped_mm



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
        self.region = 0                  # blocks whose backward is complete (set by trace.py's hooks)
        self.only = None                 # inside a compiled graph: the ops whose outputs are real buffers
        self.paused = 0                  # inside uncounted(): host memory (offloaded copies), not the device's
        self.region_peaks: dict[int, int] = {}
        self._seen: dict[int, tuple[weakref.ref, int]] = {}
        self._pending = None             # an accumulation of backward's gradients, its peak not yet known
        self._owned: dict[int, weakref.ref] = {}   # storages of compiled graphs' outputs (see :meth:`own`)

    def own(self, tensors) -> None:
        """Outputs of a compiled graph: inductor returns each as a tensor of its own over a buffer it frees
        (reinterpret_tensor), not as a view; a transposed weight gradient (a permute of an mm here) is then summed
        in place by autograd like any fresh tensor (:func:`_accumulation`)."""
        for t in tensors:
            if isinstance(t, torch.Tensor) and t._is_view():
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                self._owned[id(st)] = weakref.ref(st)

    def _owns(self, st) -> bool:
        ref = self._owned.get(id(st))
        return ref is not None and ref() is st

    def _peak(self, level: int, region: int | None = None) -> None:
        region = self.region if region is None else region
        if level > self.peak:
            self.peak = level
        if level > self.region_peaks.get(region, 0):
            self.region_peaks[region] = level

    def settle(self) -> None:
        """Count the peak of the last gradient accumulation (:func:`_accumulation`): autograd's input buffer adds
        a gradient into the one it holds in place when it holds the only reference to it (input_buffer.cpp's
        ``can_accumulate_inplace``), which a fake tensor, a tensor subclass, never passes (nor any tensor while a
        dispatch mode such as this one is active): here the sum is a new tensor and the old one dies right after.
        When it died, the sum took its place (no new peak); when it lives on, the sum was a new tensor beside it."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0]() is not None:
            self._peak(pending[1], pending[2])

    def _add(self, t, defer=None) -> None:
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
        if defer is not None:
            self._pending = (defer, self.live, self.region)
            return
        self._peak(self.live)

    def count(self, tensors) -> None:
        """Count tensors made outside an op seen here (e.g. before the mode was entered)."""
        for t in tensors:
            self._add(t)

    @contextmanager
    def uncounted(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def reset_peak(self) -> None:
        self.settle()
        self.peak = self.live
        self.region_peaks = {self.region: self.live}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.settle()
        out = fp32_grouped_mm(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if _tracing_graph() or self.paused:
            return out                       # AOTAutograd tracing a graph (compile time), not the step
        if getattr(func, "is_view", False):
            # a view shares its input's storage: never memory of its own. A storage first seen through a view was
            # made where nothing was counted: AOTAutograd keeps views of the traced outputs of each compiled
            # graph (its tangents' metadata) for the function's lifetime, one block-sized tensor per compiled
            # block, which the step never allocates (+0.54 GB on a compiled Llama-3.2-1B plan)
            return out
        if self.only is not None:
            if func.overloadpacket not in self.only:
                return out                   # fused into a kernel: never a buffer of its own
            for t in tree_flatten((args, kwargs))[0]:
                self._add(t)                 # an extern kernel reads materialised buffers
        old = _accumulation(func, args, kwargs, out, self._owns)
        for t in tree_flatten(out)[0]:
            self._add(t, defer=old)
        return out

    def __exit__(self, *exc):
        self.settle()
        return super().__exit__(*exc)


_ADD = torch.ops.aten.add.Tensor


def _accumulation(func, args, kwargs, out, owns=lambda st: False):
    """A weak reference to the storage of ``old`` when ``out = old + new`` may be autograd's input buffer summing
    two gradients of one tensor (in backward, grad mode off, same shape and dtype, ``old`` dense, not a view and
    owning its whole storage), else None; :meth:`LiveBytes.settle` decides from ``old``'s lifetime whether it was in place."""
    if func is not _ADD or len(args) != 2 or kwargs.get("alpha", 1) != 1 or torch.is_grad_enabled():
        return None
    old, new = args
    if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and isinstance(out, torch.Tensor)):
        return None
    if torch._C._current_graph_task_id() == -1:
        return None                          # not inside autograd's backward
    if old.shape != new.shape or old.shape != out.shape or old.dtype != new.dtype or old.dtype != out.dtype:
        return None
    try:
        st = old.untyped_storage()
        if old._is_view() and not owns(st) or not _dense(old) or st.nbytes() != old.numel() * old.element_size():
            return None
        return weakref.ref(st)
    except (RuntimeError, NotImplementedError):
        return None


def _dense(t) -> bool:
    try:
        from torch._prims_common import is_non_overlapping_and_dense
        return bool(is_non_overlapping_and_dense(t))
    except ImportError:
        return t.is_contiguous()


def _tracing_graph() -> bool:
    keys = torch._C._TorchDispatchModeKey
    return any(torch._C._get_dispatch_mode(getattr(keys, k)) is not None for k in ("PROXY", "FUNCTIONAL")
               if hasattr(keys, k))


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)
