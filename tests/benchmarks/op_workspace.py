"""Where a CUDA training step allocates memory that no tensor holds: each op's workspace (the allocator's peak
during the op above what was allocated before it plus its outputs), and the step's peak as the tracer's tracker
counts real CUDA tensors against the allocator's own peak. What the tracer (engine/memory/tracer) cannot see.

    python tests/benchmarks/op_workspace.py --shape qwen3-moe-small [--precision bf16-mixed] [--top 15]

The model is a random-weight one of plan_vs_measured.py's shapes, built on the GPU; one forward, the trainer's
loss (train/loss.py) and backward, under the precision's autocast.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen3-moe-small")
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftstudio.engine.memory.tracer.live import LiveBytes
    from ftstudio.engine.train.loss import causal_lm_loss
    from plan_vs_measured import SHAPES

    cfg_d, batch, seq = SHAPES[a.shape]
    d = dict(cfg_d)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.use_cache = False
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if a.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, config.vocab_size, (batch, seq), device="cuda")
    inputs = {"input_ids": ids, "labels": ids}
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.precision == "bf16-mixed")
    print(json.dumps({"experts_implementation": getattr(config, "_experts_implementation", None),
                      "torch": torch.__version__}), flush=True)

    work = defaultdict(lambda: [0, 0, ""])     # op → [calls, largest workspace, its shapes]

    class Workspace(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = func(*args, **kwargs)
            peak = torch.cuda.max_memory_allocated()
            new = sum(t.untyped_storage().nbytes() for t in tree_flatten(out)[0]
                      if isinstance(t, torch.Tensor) and t.is_cuda)
            extra = peak - before - new
            w = work[str(func)]
            w[0] += 1
            if extra > w[1]:
                shapes = [tuple(t.shape) + (str(t.dtype)[6:],) for t in tree_flatten((args, kwargs))[0]
                          if isinstance(t, torch.Tensor)]
                w[1], w[2] = extra, str(shapes)[:300]
            return out

    for step in range(2):                      # the second step: nothing left lazily initialised
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        live = LiveBytes(512)
        torch.cuda.reset_peak_memory_stats()
        with live:
            live.count(list(model.parameters()))
            live.reset_peak()
            with amp:
                loss = causal_lm_loss(model, inputs, chunked=False)
            loss.backward()
            del loss
        torch.cuda.synchronize()
        print(json.dumps({"step": step, "allocator_peak": torch.cuda.max_memory_allocated(), "before": base,
                          "tracked_peak": live.peak}), flush=True)
    model.zero_grad(set_to_none=True)
    with Workspace():
        with amp:
            loss = causal_lm_loss(model, inputs, chunked=False)
        loss.backward()
    rows = sorted(work.items(), key=lambda kv: -kv[1][1])[:a.top]
    for op, (calls, extra, shapes) in rows:
        print(json.dumps({"op": op, "calls": calls, "workspace": extra, "shapes": shapes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
