"""What the memory plan was checked against on a GPU, and what a run has beyond it: the plan says so and widens its
margin (an under-plan is an out-of-memory error; guessing low outside what was measured is the defect).

Checked (tests/benchmarks/plan_vs_measured.py and dpo_plan_gpu.py on an H100, the allocator's peak of the trainer's
own runs): the architectures of :data:`CHECKED_TYPES`, on one GPU, in the option combinations of
:data:`CHECKED_FAMILIES` (the benchmark's settings: defaults, the long compiled run, checkpointed + chunked, Fastest,
Largest), SFT and DPO, gradient accumulation off, no θ0 anchors, the model's default attention. Anything else — another
combination (what the memory budget's chooser may pick: pure bf16 with checkpointing, say), FP8, SimPO, fp16 or fp32,
Adafactor, SGD, 4-bit states, Kahan buffers, accumulation, L2-SP/EWC copies, another attention kernel — is named.
Pure logic: no torch.
"""
from __future__ import annotations

from ftstudio.core.config import RunConfig

# model_type values whose traced plan was compared with the allocator's peak on an H100 (plan_vs_measured.md)
CHECKED_TYPES = frozenset({"llama", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "bert", "qwen3_moe", "mistral"})

# (precision, optimizer, loss, checkpointing, offload, step in backward, compiled): the measured settings
CHECKED_FAMILIES = {
    ("bf16-mixed", "adamw", "full", False, False, False, False): "defaults",
    ("bf16-mixed", "adamw", "full", False, False, False, True): "long compiled run",
    ("bf16-mixed", "adamw", "chunked", True, False, False, False): "checkpointed + chunked",
    ("bf16", "adamw", "full", False, False, False, True): "Fastest",
    ("bf16", "adamw8bit", "chunked", True, True, True, True): "Largest",
}
CHECKED_METHODS = {"sft": "", "dpo": "defaults"}   # DPO: measured with the defaults' options only


def family(run: RunConfig, precision: str, compiled: bool) -> tuple:
    m = run.memory
    return (precision, run.optim.optimizer, m.loss, bool(m.activation_checkpointing),
            bool(m.offload_activations and m.activation_checkpointing), bool(m.optimizer_in_backward), bool(compiled))


def describe_family(key: tuple) -> str:
    precision, optimizer, loss, ckpt, offload, in_bwd, compiled = key
    words = [{"bf16": "pure bf16"}.get(precision, precision), optimizer, f"{loss} loss"]
    words += ["checkpointing"] * ckpt + ["offload"] * offload + ["the step in backward"] * in_bwd
    words.append("compiled" if compiled else "eager")
    return ", ".join(words)


def unchecked(run: RunConfig, *, model_type: str, precision: str, compiled: bool, gpus: int = 1) -> list[str]:
    """What of this run lies outside what was checked on a GPU (empty: all of it was), one phrase each."""
    out = []
    if model_type not in CHECKED_TYPES:
        out.append(f"model_type '{model_type}'")
    key = family(run, precision, compiled)
    name = CHECKED_FAMILIES.get(key)
    if name is None:
        out.append(f"the combination {describe_family(key)}")
    method = run.train.method
    if method not in CHECKED_METHODS:
        out.append(f"{method}")
    elif CHECKED_METHODS[method] and name not in (None, CHECKED_METHODS[method]):
        out.append(f"{method} with the {name} options")
    if precision == "bf16" and run.optim.optimizer == "adamw" and run.optim.bf16_rounding == "kahan":
        out.append("Kahan buffers (bf16_rounding kahan)")
    if run.memory.fp8 not in ("off", "auto"):
        out.append(f"FP8 linear layers ({run.memory.fp8}; traced with torchao's layers, else the closed form's FP8 term)")
    if run.memory.activation_checkpointing and run.memory.checkpoint_blocks:
        out.append(f"checkpointing of the first {run.memory.checkpoint_blocks} blocks only")
    if run.train.grad_accum > 1:
        out.append(f"gradient accumulation ({run.train.grad_accum} micro-batches)")
    reg = run.regularize
    if reg.l2sp > 0 or reg.ewc > 0 or reg.drift_every > 0:
        out.append("θ0 copies (L2-SP, EWC or drift)")
    if run.model.attention not in ("auto", "sdpa"):
        out.append(f"attention {run.model.attention}")
    if gpus > 1:
        out.append(f"{gpus} GPUs")
    return out


__all__ = ["CHECKED_TYPES", "CHECKED_FAMILIES", "unchecked", "family", "describe_family"]
