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
        if self.live > self.region_peaks.get(self.region, 0):
            self.region_peaks[self.region] = self.live

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
        self.peak = self.live
        self.region_peaks = {self.region: self.live}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = fp32_grouped_mm(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if _tracing_graph() or self.paused:
            return out                       # AOTAutograd tracing a graph (compile time), not the step
        if self.only is not None:
            if func.overloadpacket not in self.only:
                return out                   # fused into a kernel: never a buffer of its own
            for t in tree_flatten((args, kwargs))[0]:
                self._add(t)                 # an extern kernel reads materialised buffers
        for t in tree_flatten(out)[0]:
            self._add(t)
        return out


def _tracing_graph() -> bool:
    keys = torch._C._TorchDispatchModeKey
    return any(torch._C._get_dispatch_mode(getattr(keys, k)) is not None for k in ("PROXY", "FUNCTIONAL")
               if hasattr(keys, k))


def _is_fake(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return isinstance(t, FakeTensor)
