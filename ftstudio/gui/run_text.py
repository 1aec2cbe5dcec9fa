"""Words the window shows about a run: the status line at its end, and the memory plan's advice as changes
a user can apply."""
from __future__ import annotations

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import RunFinished

from .engine_access import fmt_duration


def result_line(result) -> str:
    """The status line at the end of a run: how it ended and its final metrics."""
    if isinstance(result, RunFinished):
        parts = [f"Run {result.status} after {result.steps} steps"]
        if result.elapsed_s:
            parts[0] += f" in {fmt_duration(result.elapsed_s)}"
        if result.train_loss is not None:
            parts.append(f"train loss {result.train_loss:.4f}")
        ev = result.eval or {}
        names = {"loss": "eval loss {:.4f}", "accuracy": "accuracy {:.1%}", "macro_f1": "macro-F1 {:.3f}",
                 "perplexity": "perplexity {:.2f}"}
        for key, fmt in names.items():
            if isinstance(ev.get(key), (int, float)):
                parts.append(fmt.format(ev[key]))
        return ", ".join(parts) + "." + (f" Model: {result.final_model}" if result.final_model else "")
    reason = getattr(result, "reason", "unknown")
    step = getattr(result, "step", 0)
    advice = getattr(result, "advice", "")
    return f"Run failed{f' at step {step}' if step else ''}: {reason}" + (f" {advice}" if advice else "")


def advice_actions(mem, model_config: dict, cfg: RunConfig, gpus: int, device: str | None, plan, advice) -> list:
    """The solver's single changes as (text, leaves, bytes saved, fits), with the largest batch that fits
    (about the same effective batch through grad accumulation) first when the batch is what does not fit."""
    if advice is None or advice.fits:
        return []
    out = list(getattr(advice, "changes", []) or [])
    b, ga = cfg.train.batch_size, cfg.train.grad_accum
    if 1 <= advice.max_batch_size < b:
        nb = advice.max_batch_size
        leaves = {"batch_size": nb, "grad_accum": max(1, -(-b * ga // nb))}
        try:
            saved = plan.total - mem.estimate(model_config, cfg.replace(**leaves), gpus, device=device).total
        except ConfigError:
            saved = 0
        out.insert(0, (f"batch size {nb} × grad accumulation {leaves['grad_accum']} (about the same effective "
                       "batch)", leaves, saved, True))
    return out
