"""torch.compile for training, and when it pays.

* :func:`compile_blocks` — ``torch.compile`` each transformer block in place (``Module.compile``), so one
  block type compiles once (seconds), state-dict keys keep their names, and checkpointing wrappers stay
  outside the compiled region (the recompute in backward runs the compiled block again). The head + loss
  compiled as one graph lives with the other losses (train/loss.py).
* :func:`compile_pays` — the repay rule: compile only where the seconds it saves beat the seconds it takes.
  The fast defaults (train/fast_path.py) and every preset decide compile by it.

No torch at module level: the repay rule is pure arithmetic, used before any model loads.
"""
from __future__ import annotations

import importlib.util

# Compile repays itself when the time it saves beats the time it takes. Measured on the H200 (README's speed
# section): compiled blocks + head/loss cut a step's time by ~27 % (42.6 k → 58.7 k tokens/s on the 1B shape);
# the first steps took 5–27 s longer. The eager step time is estimated from 6·N FLOPs per token at 40 % of an
# H200's 989 TFLOP/s: a slower GPU has slower steps, so compiling pays sooner there than this says.
COMPILE_SECONDS = 30.0
COMPILE_GAIN = 0.25
EAGER_FLOPS = 0.4 * 989e12


def compile_pays(total_steps: int, params: int, tokens_per_step: int, *, then: float = 1.0) -> tuple[bool, float]:
    """(worth compiling, estimated seconds the uncompiled run would take). ``then``: the further speed factor
    compiling brings with it (FP8 "auto" turns on only in a compiled run: its measured factor), so the compiled
    step takes (1 − COMPILE_GAIN) / ``then`` of the eager one."""
    eager_s = total_steps * 6.0 * params * tokens_per_step / EAGER_FLOPS
    return eager_s * (1.0 - (1.0 - COMPILE_GAIN) / then) > COMPILE_SECONDS, eager_s


def inductor_available() -> bool:
    """torch.compile's GPU backend needs triton."""
    return importlib.util.find_spec("triton") is not None


def compile_blocks(model, **compile_kwargs) -> int:
    """Compile every block of the model's main block list in place; returns how many (0 if none found)."""
    import torch

    from ftstudio.engine.models.structure import find_block_list

    blocks = find_block_list(model)
    if blocks is None:
        return 0
    # Training never reads a KV cache; building one keys each block's graph on its layer index (a recompile
    # per block). Blocks of one class then share one compiled graph; the limit is a guard for odd models.
    if getattr(getattr(model, "config", None), "use_cache", None):
        model.config.use_cache = False
    dynamo = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, key):
            setattr(dynamo, key, max(getattr(dynamo, key), len(blocks) + 8))
    for block in blocks:
        block.compile(**compile_kwargs)     # in place: no "_orig_mod." in the state dict, wrappers outside
    return len(blocks)
