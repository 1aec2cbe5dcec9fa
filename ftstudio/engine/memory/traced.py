"""The plan of a run from its traced step (tracer/), with the closed form (plan.py) as the first answer and the
fallback. No torch at import: the tracer is imported when a plan is asked for.

The traced step gives weights, gradients and the activations of forward, loss and backward (allocator-rounded);
the optimizer state, the θ0 anchors and the optimizer step's transient come from the same parameters as in the
closed form; the allocator's slack (reserved − allocated) and the CUDA context are plan.py's calibrated constants.

The margin says how far to trust the peak: 2 % for an architecture and settings checked against the allocator's
peak on a GPU (tests/benchmarks/plan_vs_measured.py), wider, and said, where the plan is outside that.
"""
from __future__ import annotations

from types import SimpleNamespace

from ftstudio.core.config import RunConfig
from ftstudio.engine.memory.plan import (ALLOCATOR_SLACK_BYTES, ALLOCATOR_SLACK_LOSS, BENCHMARK_NOTE, CUDA_CONTEXT,
                                         LOWBIT_STEP_BYTES, PRECISION_BYTES, MemoryBreakdown, estimate,
                                         optimizer_bytes, resolve_precision)
from ftstudio.engine.models import ModelShape, shape_from_config

# model_type values whose traced plan was compared with the allocator's peak on an H100 (plan_vs_measured.py,
# tests/benchmarks/results/plan_vs_measured.md: defaults, checkpointed + chunked, Fastest; −4.0 % to +6.9 %): inside
# them the margin is MARGIN_CHECKED, outside MARGIN_UNCHECKED and the plan says so.
CHECKED_TYPES = frozenset({"llama", "qwen2", "qwen3", "gemma2", "phi3", "gpt2", "bert", "qwen3_moe", "mistral"})
MARGIN_CHECKED = 0.02
MARGIN_UNCHECKED = 0.06
MARGIN_CLOSED_FORM = 0.10      # the closed form away from the Llama/Qwen2 rows it was fitted on
# 8/4-bit optimizer states with the step in backward and offload (Largest): traced, they ran from 45 % below to 23 %
# above the measured peak on an H100 (torchao 0.15 with torch 2.11, whose C++ extensions torchao skipped; the
# Qwen shapes under): not yet understood, so the plan says it cannot be trusted rather than guess.
MARGIN_LOWBIT = 0.6
def plan(model_config: dict, run: RunConfig, gpus: int = 1, device: str | None = None, *, seq_len: int | None = None,
         padded: bool = False, trust_remote_code: bool = False, source: str | None = None,
         trace: bool = True, loss_fn=None) -> MemoryBreakdown:
    """The plan of ``run``: traced where the tracer covers the run, else the closed form with a wider margin.

    ``seq_len``: the longest batch the run will see (the real rows' length; default the config's seq_len);
    ``padded``: that batch's rows differ in length, so an attention mask is passed (GQA k/v are then repeated)."""
    shape = shape_from_config(model_config)
    closed = estimate(shape, run, gpus, device=device)
    closed.margin = MARGIN_CHECKED if shape.model_type in ("llama", "qwen2") else MARGIN_CLOSED_FORM
    compiled = bool(run.memory.compile) and (device or run.hardware.device) != "cpu"
    why = _untraced(run, gpus, device, trace, loss_fn if not compiled else getattr(loss_fn, "compiled", None)) or (
        "the chunked loss needs the trainer's loss function" if run.memory.loss == "chunked" and loss_fn is None else "")
    if why:
        closed.notes.append(f"closed form ({why}); margin {closed.margin:.0%}")
        return _lowbit(closed, run, device)
    try:
        from ftstudio.engine.memory.tracer import hf_config
        config = hf_config(model_config, trust_remote_code=trust_remote_code, source=source)
        traced = _trace(config, shape, run, device, seq_len, padded, trust_remote_code, loss_fn)
    except Exception as e:  # noqa: BLE001 - any model code may fail on fake tensors: the closed form answers
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        closed.notes.append(f"closed form: the model's step could not be traced on fake tensors ({type(e).__name__}: "
                            f"{first}); margin {closed.margin:.0%}")
        return closed
    return _lowbit(_compose(traced, shape, run, gpus, device, closed), run, device)


def _lowbit(out: MemoryBreakdown, run: RunConfig, device) -> MemoryBreakdown:
    m = run.memory
    if (run.optim.optimizer in ("adamw8bit", "adamw4bit") and (device or run.hardware.device) != "cpu"
            and (m.optimizer_in_backward or m.offload_activations)):
        out.margin = MARGIN_LOWBIT
        out.notes.append("8/4-bit optimizer states with the step in backward or offloaded activations ran from 45 % "
                         "below to 23 % above such plans on an H100 (torchao 0.15, torch 2.11; the cause is not "
                         f"found): this plan is NOT reliable for this run; margin {MARGIN_LOWBIT:.0%}")
    return out


def _untraced(run: RunConfig, gpus: int, device: str | None, trace: bool, loss_compiled=None) -> str:
    on_cpu = (device or run.hardware.device) == "cpu"
    m = run.memory
    if not trace:
        return "tracing off"
    if gpus > 1:
        return "several GPUs: FSDP's gathered blocks are not traced"
    if m.compile and not on_cpu and loss_compiled is None:
        return "compiled blocks without the trainer's compiled loss"
    if m.loss == "chunked" and not on_cpu and _liger():
        return "Liger's fused loss is a Triton kernel, not traced"
    return ""


def _liger() -> bool:
    import importlib.util
    return importlib.util.find_spec("liger_kernel") is not None


def _trace(config, shape: ModelShape, run: RunConfig, device, seq_len, padded, trust_remote_code, loss_fn):
    from ftstudio.engine.memory.tracer import CUDA_BLOCK, StepChoices, trace_step

    on_cpu = (device or run.hardware.device) == "cpu"
    compiled = bool(run.memory.compile) and not on_cpu
    task = run.model.task if run.model.task != "auto" else ("classification" if shape.is_encoder else "causal-lm")
    choices = StepChoices(batch=run.train.batch_size, seq_len=int(seq_len or run.data.seq_len),
                          precision=resolve_precision(run, device), task=task,
                          attention="auto" if run.model.attention == "flex_attention" else run.model.attention,
                          checkpointing=run.memory.activation_checkpointing, loss=run.memory.loss,
                          grad_accum=run.train.grad_accum, in_backward=run.memory.optimizer_in_backward,
                          offload=run.memory.offload_activations and not on_cpu,
                          reentrant=_reentrant(loss_fn, run.memory.offload_activations),
                          padded=padded, block=1 if on_cpu else CUDA_BLOCK, compiled=compiled,
                          loss_fn=(getattr(loss_fn, "compiled", None) if compiled else None) or loss_fn)
    return trace_step(config, choices, trust_remote_code=trust_remote_code)


def _reentrant(loss_fn, offload: bool) -> bool:
    """The trainer's checkpoint kind, from its own rule when the caller passes it (``loss_fn.checkpoint_kwargs``)."""
    kwargs = getattr(loss_fn, "checkpoint_kwargs", None)
    return bool(kwargs(offload).get("use_reentrant")) if kwargs else False


def _compose(t, shape: ModelShape, run: RunConfig, gpus: int, device, closed: MemoryBreakdown) -> MemoryBreakdown:
    precision = resolve_precision(run, device)
    wb, c, _, _ = PRECISION_BYTES[precision]
    on_cpu = (device or run.hardware.device) == "cpu"
    # the optimizer state of the real module's parameters (a config-only shape can miss some: a mixture of experts'
    # 3-D expert tensors were 300 M of 489 M parameters in the closed form's shape of a small Qwen3-MoE)
    kahan = run.optim.bf16_rounding == "kahan"
    opt = t.extrapolate(lambda shapes: optimizer_bytes(SimpleNamespace(tensors=shapes), run.optim.optimizer, wb,
                                                       kahan=kahan)) if t.tensors else \
        optimizer_bytes(shape, run.optim.optimizer, wb, kahan=kahan)
    anchor = closed.anchor
    in_bwd = run.memory.optimizer_in_backward
    step_tmp = (wb + c + LOWBIT_STEP_BYTES.get(run.optim.optimizer, 0)) * t.largest
    grads_end = wb * t.largest if in_bwd else t.gradients
    phases = {
        # forward + loss + backward as traced (weights, gradients as they accumulate, activations), with the
        # optimizer state of the steps before beside them; the step in backward updates one tensor at a time
        "forward/backward": t.train_peak + opt + anchor + (step_tmp if in_bwd else 0),
        "optimizer step": t.weights + grads_end + opt + anchor + step_tmp
        + (grads_end if run.optim.optimizer == "adafactor" else 0),
    }
    evaluation = t.eval_peak + opt + anchor
    if run.data.val_dataset or run.data.val_fraction > 0:        # a run without validation rows never evaluates
        phases["evaluation"] = evaluation
    if "phase:benchmarks" in closed.parts:  # the harness pass: the traced evaluation + what its full logits add
        phases["benchmarks"] = evaluation + max(0, closed.parts["phase:benchmarks"]
                                                - closed.parts.get("eval_pass", 0))
    phase = max(phases, key=phases.get)
    peak = phases[phase]
    if on_cpu:
        reserved, other = peak, 0
    else:
        loss_buffers = closed.parts.get("loss", 0) if (run.memory.activation_checkpointing or precision == "bf16") else 0
        reserved = int(peak + min(ALLOCATOR_SLACK_BYTES, 0.1 * peak) + ALLOCATOR_SLACK_LOSS * loss_buffers)
        other = CUDA_CONTEXT + reserved - peak
    grads_shown = grads_end
    activations = max(0, peak - (t.weights + grads_shown + opt + anchor))
    checked = shape.model_type in CHECKED_TYPES
    margin = MARGIN_CHECKED if checked else MARGIN_UNCHECKED
    notes = [f"traced: the model's own step on fake tensors ({'/'.join(map(str, t.layers_traced))} blocks traced"
             f"{', repeated to ' + str(shape.layers) if max(t.layers_traced) < shape.layers else ''}; "
             f"{t.seconds:.1f} s)"]
    if run.memory.compile and not on_cpu:
        notes.append("compiled blocks and head: the tensors inductor's partitioner saves, from AOTAutograd's graphs of "
                     "the model's own block, run as inductor runs them (each value dropped after its last use, padded rows "
                     "beside their inputs); on an H100 such plans ran 4 % below to 7 % above the measured peak")
    if not checked:
        notes.append(f"model_type '{shape.model_type}' is outside the architectures checked on a GPU; margin "
                     f"widened to {margin:.0%}")
    notes += t.notes
    if "benchmarks" in phases:
        notes.append(BENCHMARK_NOTE.format(b=run.train.batch_size, s=run.data.seq_len, gb=phases["benchmarks"] / 1e9))
    parts = {k: v for k, v in closed.parts.items() if not k.startswith("phase:")}   # the traced phases only
    parts.update({f"phase:{k}": v for k, v in phases.items()}, per_layer=t.per_layer,
                 closed_form_peak=closed.peak_allocated, traced_seconds=int(t.seconds * 1000))
    return MemoryBreakdown(weights=t.weights, gradients=grads_shown, optimizer=opt, activations=activations,
                           other=other, anchor=anchor, textbook=closed.textbook, params=t.params,
                           peak_allocated=peak, peak_reserved=reserved, peak_phase=phase, parts=parts,
                           host=closed.host, method="traced", margin=margin, notes=notes)


__all__ = ["plan", "CHECKED_TYPES", "MARGIN_CHECKED", "MARGIN_UNCHECKED", "MARGIN_LOWBIT"]
