"""The memory room: the bytes a full fine-tune needs per device, before it starts, and what it used.

- ``plan.py``: ``estimate`` (a ``MemoryBreakdown`` from a model's shape and a RunConfig) and the seed's 16N
  textbook figure; it knows nothing of advice;
- ``solve.py``: what fits (largest batch / sequence), the single change that saves the most, and the
  explanation of an out-of-memory error, all by calling ``plan.estimate``;
- ``shape.py``: a model source → its ``ModelShape`` (exact tensors from safetensors headers when present);
- ``report.py``: what ``ftstudio estimate`` prints; ``measure.py``: the same terms counted from live tensors.

No torch at module level anywhere here: the GUI plans while the user edits the form.
"""
from ftstudio.engine.memory.measure import measure
from ftstudio.engine.memory.plan import (CUDA_CONTEXT, PRECISION_BYTES, MemoryBreakdown, chunk_tokens, estimate,
                                         layer_bytes_per_token, optimizer_bytes, resolve_precision, textbook_bytes)
from ftstudio.engine.memory.report import estimate_report, format_report, seed_table
from ftstudio.engine.memory.shape import load_shape
from ftstudio.engine.memory.solve import Advice, explain_oom, solve

__all__ = ["MemoryBreakdown", "Advice", "estimate", "solve", "measure", "explain_oom", "textbook_bytes",
           "optimizer_bytes", "layer_bytes_per_token", "chunk_tokens", "resolve_precision", "PRECISION_BYTES",
           "CUDA_CONTEXT", "load_shape", "estimate_report", "format_report", "seed_table"]
