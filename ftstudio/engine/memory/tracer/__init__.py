"""The tracer: the memory of a training step from the model's own forward, loss and backward, run on fake tensors
on the CPU (``step.py``), with what a CUDA step does differently (``rules.py``), the bytes alive counted by a
dispatch mode (``live.py``) and compiled blocks split as inductor would (``compiled.py``).

This face imports no torch: the planning room (memory/traced.py) and the GUI import it freely, and the modules
behind it, which subclass torch's dispatch and function modes, load only when a name is first used.
"""
from __future__ import annotations

import importlib

CUDA_BLOCK = 512            # the CUDA caching allocator rounds every allocation up to a multiple of 512 bytes

_WHERE = {"LiveBytes": "live", "round_block": "live",
          "CudaAutocastRules": "rules",
          "StepChoices": "step", "Trace": "step", "trace_step": "step", "hf_config": "step", "layer_period": "step",
          "aot": "compiled", "compile_blocks_aot": "compiled"}


def __getattr__(name: str):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{where}"), name)


__all__ = ["CUDA_BLOCK", *_WHERE]
