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
                                         CUBLAS_WORKSPACES,
                                         LOWBIT_STEP_BYTES, PRECISION_BYTES, MemoryBreakdown, estimate, lowbit_for,
                                         optimizer_bytes, resolve_precision)
from ftstudio.engine.memory.checked import CHECKED_TYPES, unchecked
from ftstudio.engine.models import ModelShape, shape_from_config

# Inside what was checked on a GPU (memory/checked.py: architectures, option combinations, methods) the margin is
# MARGIN_CHECKED; outside it MARGIN_UNCHECKED, and the plan names what is outside.
MARGIN_CHECKED = 0.02
MARGIN_UNCHECKED = 0.06
MARGIN_CLOSED_FORM = 0.10      # the closed form away from the Llama/Qwen2 rows it was fitted on
# 8/4-bit optimizer states with the step in backward and offload (Largest): six shapes on an H100 within -0.7 % ..
# +2.4 % of today's plans, four of them re-measured clean in the third session (the earlier rows had a leak of the
# benchmark's: each finished run's weights and states kept alive by the step-in-backward hooks, fixed in
# train/in_backward.py); tests/benchmarks/results/plan_vs_measured.md. Inside what was checked: the checked margin.
MARGIN_LOWBIT = MARGIN_CHECKED
LOWBIT_NOTE = ("8/4-bit optimizer states with the step in backward or offloaded activations: checked on an H100 "
               "(6 shapes, -0.7 % to +2.4 %); margin {margin:.0%}")
def plan(model_config: dict, run: RunConfig, gpus: int = 1, device: str | None = None, *, seq_len: int | None = None,
         padded: bool = False, trust_remote_code: bool = False, source: str | None = None,
         trace: bool = True, loss_fn=None, plan_of=None) -> MemoryBreakdown:
    """The plan of ``run``: traced where the tracer covers the run, else the closed form with a wider margin.

    ``seq_len``: the longest batch the run will see (the real rows' length; default the config's seq_len);
    ``padded``: that batch's rows differ in length, so an attention mask is passed (GQA k/v are then repeated).
    ``plan_of(model_config, run)``: how the two ends of a some-blocks checkpointing plan are planned (a caller's
    cache; default this function)."""
    shape = shape_from_config(model_config)
    kw = dict(seq_len=seq_len, padded=padded, trust_remote_code=trust_remote_code, source=source, trace=trace,
              loss_fn=loss_fn)
    if run.memory.activation_checkpointing and 0 < run.memory.checkpoint_blocks < shape.layers and trace:
        ends = plan_of or (lambda mc, r: plan(mc, r, gpus, device, **kw))
        partial = _some_blocks(model_config, run, shape.layers, ends)
        if partial is not None:
            return partial
    closed = estimate(shape, run, gpus, device=device)
    closed.margin = MARGIN_CHECKED if shape.model_type in ("llama", "qwen2") else MARGIN_CLOSED_FORM
    compiled = bool(run.memory.compile) and (device or run.hardware.device) != "cpu"
    why = _untraced(run, gpus, device, trace, loss_fn if not compiled else getattr(loss_fn, "compiled", None)) or (
        "the chunked loss needs the trainer's loss function" if run.memory.loss == "chunked" and loss_fn is None else "")
    if why:
        closed.notes.append(f"closed form ({why}); margin {closed.margin:.0%}")
        return _checked(_lowbit(closed, run, device), run, shape, gpus, device, compiled)
    try:
        from ftstudio.engine.memory.tracer import hf_config
        config = hf_config(model_config, trust_remote_code=trust_remote_code, source=source)
        traced = _trace(config, shape, run, device, seq_len, padded, trust_remote_code, loss_fn)
    except Exception as e:  # noqa: BLE001 - any model code may fail on fake tensors: the closed form answers
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        closed.notes.append(f"closed form: the model's step could not be traced on fake tensors ({type(e).__name__}: "
                            f"{first}); margin {closed.margin:.0%}")
        return _checked(closed, run, shape, gpus, device, compiled)
    return _checked(_lowbit(_compose(traced, shape, run, gpus, device, closed), run, device), run, shape, gpus, device,
                    compiled)


def _some_blocks(model_config: dict, run: RunConfig, layers: int, ends):
    """The plan of checkpointing the first k of L blocks (``memory.checkpoint_blocks``) from two traced plans of
    the same run: every block checkpointed and none. A checkpointed block keeps its input where an uncheckpointed
    one keeps its activations, so what is held at the start of backward falls linearly in k, from the plan with
    none to the plan with all; the recompute of a checkpointed block comes later, with fewer activations held
    than when every block is checkpointed, so the all-blocks plan bounds the peak from below. None where either
    could not be traced (the closed form then plans it)."""
    import dataclasses

    k = run.memory.checkpoint_blocks
    every = ends(model_config, run.replace(checkpoint_blocks=0))
    none = ends(model_config, run.replace(activation_checkpointing=False, checkpoint_blocks=0))
    if every.method != "traced" or none.method != "traced":
        return None
    share = k / layers

    def between(a: int, b: int) -> int:       # a: none, b: every block
        return max(b, round(a - share * (a - b)))
    out = dataclasses.replace(none, activations=between(none.activations, every.activations),
                              other=between(none.other, every.other),
                              peak_allocated=between(none.peak_allocated, every.peak_allocated),
                              peak_reserved=between(none.peak_reserved, every.peak_reserved),
                              parts={key: between(v, every.parts[key]) for key, v in none.parts.items()
                                     if key in every.parts},
                              margin=max(none.margin, every.margin), notes=[
                                  f"traced: the first {k} of {layers} blocks checkpointed, between the traced plans "
                                  f"of every block checkpointed ({every.peak_allocated / 1e9:.2f} GB) and none "
                                  f"({none.peak_allocated / 1e9:.2f} GB), linear in the blocks",
                                  *[n for n in every.notes if not n.startswith("traced:")]])
    if out.peak_allocated == every.peak_allocated:
        out.peak_phase = every.peak_phase
    return out


def _checked(out: MemoryBreakdown, run: RunConfig, shape: ModelShape, gpus: int, device, compiled: bool):
    """Name what of the run lies outside what was checked on a GPU (memory/checked.py) and widen the margin to
    MARGIN_UNCHECKED; a CPU plan is checked against the process's RSS, so only its architecture is named."""
    on_cpu = (device or run.hardware.device) == "cpu"
    what = ([f"model_type '{shape.model_type}'"] if shape.model_type not in CHECKED_TYPES else []) if on_cpu else \
        unchecked(run, model_type=shape.model_type, precision=resolve_precision(run, device), compiled=compiled,
                  gpus=gpus)
    if what:
        out.margin = max(out.margin, MARGIN_UNCHECKED)
        out.notes.append(f"outside what was checked on a GPU: {'; '.join(what)}; margin widened to {out.margin:.0%}")
    return out


def _lowbit(out: MemoryBreakdown, run: RunConfig, device) -> MemoryBreakdown:
    """8/4-bit states: say which library the trainer will build them with here (memory.lowbit), or that the run
    will stop at setup; with the step in backward or offload (Largest), widen the margin to MARGIN_LOWBIT."""
    if run.optim.optimizer not in ("adamw8bit", "adamw4bit") or (device or run.hardware.device) == "cpu":
        return out
    from ftstudio.engine.memory.lowbit import lowbit_library

    found = lowbit_library(run.optim.optimizer, probe=True)
    if not found.usable:
        out.notes.append(f"the run will stop at setup: {found.problem()}; planned with {run.optim.optimizer}'s "
                         "states as if it were installed")
    else:
        out.notes.append(f"{run.optim.optimizer}: {found.library}'s states (what the trainer builds here)")
    m = run.memory
    if m.optimizer_in_backward or m.offload_activations:
        out.margin = max(out.margin, MARGIN_LOWBIT)
        out.notes.append(LOWBIT_NOTE.format(margin=MARGIN_LOWBIT))
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
    if m.activation_checkpointing and m.checkpoint_blocks:
        return "checkpointing of some blocks only, and the plans of every block and of none did not both trace"
    if m.fp8 in ("tensorwise", "rowwise") and not on_cpu and not _installed("torchao"):
        return "FP8 linear layers without torchao here (the closed form's FP8 term plans them)"
    return ""


def _liger() -> bool:
    return _installed("liger_kernel")


def _installed(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


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
                          step_bytes=step_bytes(run, device) if run.memory.optimizer_in_backward else 0,
                          offload=run.memory.offload_activations and not on_cpu,
                          reentrant=_reentrant(loss_fn, run.memory.offload_activations),
                          padded=padded, block=1 if on_cpu else CUDA_BLOCK, compiled=compiled,
                          loss_fn=(getattr(loss_fn, "compiled", None) if compiled else None) or loss_fn,
                          fp8=run.memory.fp8 if run.memory.fp8 in ("tensorwise", "rowwise") and not on_cpu else None)
    return trace_step(config, choices, trust_remote_code=trust_remote_code)


def step_bytes(run: RunConfig, device=None) -> int:
    """The optimizer update's transient, bytes per value of the tensor updated: its weight and gradient upcast, and
    the 8/4-bit states dequantised (plan.LOWBIT_STEP_BYTES)."""
    wb, c, _, _ = PRECISION_BYTES[resolve_precision(run, device)]
    if run.optim.optimizer == "adamw8bit" and lowbit_for(run, probe=True) == "ftstudio" and \
            (device or run.hardware.device) != "cpu":
        return 0      # train/fp8_state_adamw.py: one fused pass in registers (its torch path: 4 M values at a time)
    return wb + c + LOWBIT_STEP_BYTES.get(run.optim.optimizer, 0)


def step_transient(run: RunConfig, device=None) -> int:
    """What the optimizer step (outside backward) allocates beside its states, bytes per value of the largest tensor:
    nothing for AdamW (torch's fused kernel on fp32 weights, the Triton bf16 kernel on bf16 weights without Kahan
    buffers: each updates in place; an H100 step of the Llama-3.2-1B shape peaked at exactly weights + gradients +
    states + cuBLAS's workspaces), the dequantised 8/4-bit states and upcast weight and gradient of one tensor
    for torchao's optimizers, and :func:`step_bytes` (errs high) for the others (Kahan's compiled multi-tensor
    update, Adafactor, SGD)."""
    if run.optim.optimizer == "adamw" and not (resolve_precision(run, device) == "bf16"
                                               and run.optim.bf16_rounding == "kahan"):
        return 0
    return step_bytes(run, device)


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
    kahan, library = run.optim.bf16_rounding == "kahan", lowbit_for(run, probe=True)   # the trainer's own choice
    opt = t.extrapolate(lambda shapes: optimizer_bytes(SimpleNamespace(tensors=shapes), run.optim.optimizer, wb,
                                                       kahan=kahan, library=library)) if t.tensors else \
        optimizer_bytes(shape, run.optim.optimizer, wb, kahan=kahan, library=library)
    anchor = closed.anchor
    in_bwd = run.memory.optimizer_in_backward
    step_tmp = (step_bytes(run, device) if in_bwd else step_transient(run, device)) * t.largest
    grads_end = wb * t.largest if in_bwd else t.gradients
    phases = {
        # forward + loss + backward as traced (weights, gradients as they accumulate, activations), with the
        # optimizer state of the steps before beside them; the step in backward updates one tensor at a time, its
        # transient traced at the moment that tensor's gradient completes (tracer/step.py)
        "forward/backward": t.train_peak + opt + anchor,
        "optimizer step": t.weights + grads_end + opt + anchor + step_tmp
        + (grads_end if run.optim.optimizer == "adafactor" else 0),
    }
    evaluation = t.eval_peak + opt + anchor
    if run.data.val_dataset or run.data.val_fraction > 0:        # a run without validation rows never evaluates
        phases["evaluation"] = evaluation
    if "phase:benchmarks" in closed.parts:  # the harness pass: the traced evaluation + what its full logits add
        phases["benchmarks"] = evaluation + max(0, closed.parts["phase:benchmarks"]
                                                - closed.parts.get("eval_pass", 0))
    if not on_cpu:                   # cuBLAS's workspaces: allocated in the first step, kept (plan.py)
        phases = {k: v + CUBLAS_WORKSPACES for k, v in phases.items()}
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
    margin = MARGIN_CHECKED           # widened by _checked where the run is outside what was checked
    notes = [f"traced: the model's own step on fake tensors ({'/'.join(map(str, t.layers_traced))} blocks traced"
             f"{', repeated to ' + str(shape.layers) if max(t.layers_traced) < shape.layers else ''}; "
             f"{t.seconds:.1f} s)"]
    if run.memory.compile and not on_cpu:
        notes.append("compiled blocks and head: the tensors inductor's partitioner saves, from AOTAutograd's graphs of "
                     "the model's own block, run as inductor runs them (each value dropped after its last use, padded rows "
                     "beside their inputs); on an H100 eleven such plans (Fastest, a compiled long run) ran 0.7 % below to "
                     "1.3 % above the allocator's peak (tests/benchmarks/results/plan_vs_measured.md)")
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
