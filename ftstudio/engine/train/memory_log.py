"""Every run a calibration row: each memory snapshot of a CUDA run carries the plan of the same run beside what
the allocator measured, and the first one says both in the log. The plan is made once, at the first snapshot,
from the config the trainer trains with (its compile choice as made) and the model's config.json."""
from __future__ import annotations

from ftstudio.core.events import LogLine, MemorySnapshot


def _plan(trainer, device: str):
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    cfg = trainer.cfg.replace(compile=bool(getattr(trainer, "compiled", False)), fast_defaults=False)
    s = cfg.data.seq_len
    longest, later = getattr(trainer, "_pairs_rows", None) or (s, None)   # dpo / simpo: their pairs (train/dpo.py)
    rows = RowFacts(count=0, longest=longest, fill=1.0, padded=False, total_steps=cfg.train.max_steps or 0,
                    later=later)
    return plan_run(cfg, model_config=trainer._model_config, device=device, rows=rows).plan


def snapshot(trainer, model, device: str) -> MemorySnapshot:
    """``measure`` of the run now, with ``planned_peak`` / ``planned_phases`` of its plan (CUDA runs)."""
    from ftstudio.engine.memory import measure

    snap = measure(model, trainer.optimizer, device, trainer.step)
    if not str(device).startswith("cuda") or not getattr(trainer, "_model_config", None):
        return snap
    plan = getattr(trainer, "_memory_plan", None)
    if plan is None:
        try:
            plan = _plan(trainer, device)
        except Exception as e:  # noqa: BLE001 - the run goes on without its plan, and says so
            trainer._memory_plan = False
            trainer.report(LogLine(f"Memory plan not made for this run: {type(e).__name__}: {e}"[:300], "warning"))
            return snap
        trainer._memory_plan = plan
        if snap.allocated_peak:
            err = (plan.peak_allocated - snap.allocated_peak) / snap.allocated_peak
            trainer.report(LogLine(f"Memory plan ({plan.method}): allocator peak {plan.peak_allocated / 1e9:.2f} GB "
                                   f"at the {plan.peak_phase}; measured {snap.allocated_peak / 1e9:.2f} GB over "
                                   f"step {snap.step} ({err:+.1%})"))
    if plan:
        snap.planned_peak = plan.peak_allocated
        snap.planned_phases = {k[6:]: v for k, v in plan.parts.items() if k.startswith("phase:")}
    return snap
