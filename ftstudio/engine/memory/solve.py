"""What fits: the largest micro-batch and sequence for a card, the single change that saves the most,
and the explanation of an out-of-memory error. Pure arithmetic over :func:`plan.estimate`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError

from ftstudio.engine.memory.plan import estimate
from ftstudio.engine.models import ModelShape, shape_from_config


@dataclass
class Advice:
    max_batch_size: int             # 0: not even batch 1 fits at this sequence length
    max_seq_len: int                # 0: not even 128 tokens fit at this batch size
    fits: bool
    suggestions: list[str] = field(default_factory=list)
    savings: list[tuple[str, int, bool]] = field(default_factory=list)  # (change, bytes saved, makes it fit)
    # the same changes as the config leaves each sets ({} when it is not a field, e.g. more GPUs), for an
    # "Apply" button: (change, leaves, bytes saved, makes it fit)
    changes: list[tuple[str, dict, int, bool]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "max_seq_len": self.max_seq_len, "fits": self.fits,
                "suggestions": list(self.suggestions)}


def _total(shape: ModelShape, run: RunConfig, gpus: int, device: str | None = None) -> int:
    return estimate(shape, run, gpus, device=device).total


def _largest(fits, lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with fits(x) (fits is monotone decreasing); lo - 1 when none."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _variant(run: RunConfig, **leaves) -> RunConfig | None:
    try:
        return run.replace(**leaves)
    except ConfigError:
        return None


def _changes(run: RunConfig, gpus: int, shape: ModelShape,
             device: str | None = None) -> list[tuple[str, RunConfig, int, dict]]:
    """Single changes a user can make, each as (description, new config, gpus, the config leaves it sets)."""
    m, o, h, t = run.memory, run.optim, run.hardware, run.train
    on_gpu = (device or h.device) != "cpu"
    out: list[tuple[str, dict, int]] = []
    if not m.activation_checkpointing:
        out.append(("turn on activation checkpointing", {"activation_checkpointing": True}, gpus))
    if m.loss == "full" and not shape.is_encoder:
        out.append(("chunked loss (--loss chunked)", {"loss": "chunked"}, gpus))
    if o.optimizer in ("adamw", "sgd"):
        out.append(("8-bit AdamW (--optimizer adamw8bit)", {"optimizer": "adamw8bit"}, gpus))
    if o.optimizer in ("adamw", "sgd", "adamw8bit"):
        out.append(("4-bit AdamW (--optimizer adamw4bit)", {"optimizer": "adamw4bit"}, gpus))
    if o.optimizer != "adafactor":
        out.append(("Adafactor (--optimizer adafactor)", {"optimizer": "adafactor"}, gpus))
    if h.precision in ("fp32", "bf16-mixed", "fp16-mixed", "auto") and on_gpu:
        out.append(("pure bf16 weights and states (--precision bf16)", {"precision": "bf16"}, gpus))
    if h.precision == "fp32":
        out.append(("bf16 mixed precision (--precision bf16-mixed)", {"precision": "bf16-mixed"}, gpus))
    if t.batch_size > 1:
        half = max(1, t.batch_size // 2)
        out.append((f"batch size {half} with grad accumulation {t.grad_accum * 2} (same effective batch)",
                    {"batch_size": half, "grad_accum": t.grad_accum * 2}, gpus))
    if not m.optimizer_in_backward and t.grad_accum == 1:
        out.append(("optimizer step in backward (--optimizer-in-backward)", {"optimizer_in_backward": True}, gpus))
    if t.method == "dpo" and t.dpo_reference == "model":   # the frozen copy of θ0 is a whole copy of the weights
        out.append(("precomputed DPO reference (--dpo-reference precompute)", {"dpo_reference": "precompute"}, gpus))
    if on_gpu and t.method == "sft":   # preference runs are on one device for now
        out.append((f"{gpus * 2} GPUs (FSDP)", {}, gpus * 2))
    made = [(d, _variant(run, **lv) if lv else run, g, lv) for d, lv, g in out]
    return [(d, r, g, lv) for d, r, g, lv in made if r is not None]


def _amount(nbytes: int) -> str:
    """GB to one decimal, or MB under 0.1 GB (a small model's savings are not all "0.0 GB")."""
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _context(model_config) -> int | None:
    """The model's context length (config.json's ``max_position_embeddings`` / ``n_positions``), if it says."""
    if isinstance(model_config, ModelShape):
        return model_config.context
    return shape_from_config(model_config).context if isinstance(model_config, dict) else None


def solve(model_config: dict | ModelShape, run_config: RunConfig, capacity_bytes: int, gpus: int = 1,
          margin: float = 0.05, device: str | None = None) -> Advice:
    """Largest batch / sequence within ``capacity_bytes``·(1 − margin), and single changes ranked by saving
    (``device`` as in :func:`plan.estimate`)."""
    shape = model_config if isinstance(model_config, ModelShape) else shape_from_config(model_config)
    budget = int(capacity_bytes * (1 - margin))
    run = run_config
    base = _total(shape, run, gpus, device)
    fits = base <= budget

    def batch_fits(b: int) -> bool:
        r = _variant(run, batch_size=b)
        return r is not None and _total(shape, r, gpus, device) <= budget

    def tokens_fit(t: int) -> bool:
        r = _variant(run, seq_len=t)
        return r is not None and _total(shape, r, gpus, device) <= budget

    def seq_fits(s: int) -> bool:
        return tokens_fit(s * 128)

    max_b = max(0, _largest(batch_fits, 1, 65536))
    # never past the model's own context (learned positions end there; rotary ones were trained to it)
    context = _context(model_config)
    max_s = max(0, _largest(seq_fits, 1, context // 128 if context else 8192)) * 128 if not context or context >= 128 else 0
    if context and max_s in (0, context // 128 * 128) and tokens_fit(context):
        max_s = context
    changes = []
    for desc, r, g, leaves in _changes(run, gpus, shape, device):
        t = _total(shape, r, g, device)
        if t < base:
            changes.append((desc, leaves, base - t, t <= budget))
    # Changes that make it fit first, then by bytes saved.
    changes.sort(key=lambda x: (not x[3], -x[2]))
    savings = [(desc, saved, ok) for desc, _leaves, saved, ok in changes]
    sugg = [f"{desc}: −{_amount(saved)}" + (" (fits)" if ok and not fits else "")
            for desc, saved, ok in savings]
    if not fits and max_b >= 1:
        sugg.insert(0, f"batch size {max_b} (the largest that fits; raise grad accumulation to keep the "
                       f"effective batch)")
    return Advice(max_batch_size=max_b, max_seq_len=max_s, fits=fits, suggestions=sugg, savings=savings,
                  changes=changes)


def explain_oom(model_config: dict | ModelShape, run_config: RunConfig, gpus: int, capacity: int | None,
                measured_peak: int | None) -> tuple[str, str]:
    """(reason, advice) for a CUDA out-of-memory error: what the plan predicted, what was measured, and the
    one or two changes that make the run fit."""
    shape = model_config if isinstance(model_config, ModelShape) else shape_from_config(model_config)
    est = estimate(shape, run_config, gpus)
    gb = lambda x: f"{x / 1e9:.1f} GB"  # noqa: E731
    cap = f"{gb(capacity)} card" if capacity else "this GPU"
    reason = (f"Out of GPU memory on a {cap}: the plan predicted a peak of {gb(est.total)} "
              f"(weights {gb(est.weights)}, gradients {gb(est.gradients)}, optimizer {gb(est.optimizer)}, "
              f"activations {gb(est.activations)}, other {gb(est.other)}; largest at the {est.peak_phase})")
    if measured_peak:
        reason += f"; the allocator held {gb(measured_peak)} when the allocation failed."
    else:
        reason += "."
    if not capacity:
        return reason, "Lower the batch size or sequence length, or turn on activation checkpointing."
    adv = solve(shape, run_config, capacity, gpus)
    fixes = [s for s in adv.savings if s[2]]
    lines = []
    if adv.max_batch_size >= 1 and adv.max_batch_size < run_config.train.batch_size:
        lines.append(f"set batch size to {adv.max_batch_size} (raise grad accumulation to keep the effective batch)")
    for desc, saved, _ in fixes[: 2 - len(lines)]:
        lines.append(f"{desc} (saves {gb(saved)})")
    if not lines:
        lines = [f"{d} (saves {gb(s)})" for d, s, _ in adv.savings[:2]] or ["use a GPU with more memory"]
        lines[-1] += "; even then it may not fit: combine several changes or use more GPUs"
    return reason, "To make it fit: " + "; or ".join(lines) + "."
