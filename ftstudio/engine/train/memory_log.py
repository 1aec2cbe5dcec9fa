"""Every run a calibration row: each memory snapshot of a run carries the plan of the same run beside what was
measured, per phase of the step (forward, backward, optimizer step, evaluation, checkpoint), and the first one says
both in the log. The plan is made once, at the first snapshot, from the config the trainer trains with (its
compile choice as made) and the model's config.json.

Measured per phase as cheaply as the device allows (:class:`PhaseMeter`): on CUDA the allocator's peak
(``max_memory_allocated``, reset at each phase's end: host-side counters, no device sync); on the CPU the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), from which a CPU run's
activations are measured: the peak over forward and backward less the resident set at the step's start (weights
and optimizer state) less the gradients. The resident set grows only by pages newly made resident: what the C
allocator hands out again from memory freed earlier in the process (resident already) is not seen, so a CPU phase's
figure is a lower bound of what it allocated."""
from __future__ import annotations

from contextlib import contextmanager

from ftstudio.core.events import LogLine, MemorySnapshot


class PhaseMeter:
    """The peak of each phase since the last :meth:`take`. ``begin(True)`` opens a measured step; ``mark(name)``
    closes a phase (a no-op outside a measured step); ``phase(name)`` measures a block (evaluation, checkpoint)."""

    def __init__(self, device: str, rows=None):
        self.cuda = str(device).startswith("cuda")
        self.rows = rows             # (prepared data, schedule): what the run's plan is made for (``snapshot``)
        self.idx = None
        self.active = False
        self.phases: dict[str, int] = {}
        self.start = None            # bytes held as the measured step began (RSS on the CPU)
        self.before = 0              # the peak of the steps before it (the snapshot's peak covers them too)
        self.rss = not self.cuda and _reset_rss_peak()

    def _peak(self) -> int:
        if self.cuda:
            import torch
            if self.idx is None:
                self.idx = torch.cuda.current_device()
            return torch.cuda.max_memory_allocated(self.idx)
        return _rss_peak() if self.rss else 0

    def _reset(self) -> None:
        if self.cuda:
            import torch
            torch.cuda.reset_peak_memory_stats(self.idx)
        elif self.rss:
            _reset_rss_peak()

    def begin(self, active: bool) -> None:
        self.active = bool(active) and (self.cuda or self.rss)
        if self.active:
            self.before = max(self.before, self._peak())
            self._reset()
            self.start = self._now()

    def _now(self) -> int:
        if self.cuda:
            import torch
            return torch.cuda.memory_allocated(self.idx)
        return _rss_peak()           # just reset: the peak is what is resident now

    def mark(self, name: str) -> None:
        if not self.active:
            return
        self.phases[name] = max(self.phases.get(name, 0), self._peak())
        self._reset()

    @contextmanager
    def phase(self, name: str):
        if not (self.cuda or self.rss):
            yield
            return
        self.before = max(self.before, self._peak())
        self._reset()
        try:
            yield
        finally:
            self.phases[name] = max(self.phases.get(name, 0), self._peak())
            self._reset()

    def take(self) -> tuple[dict[str, int], int | None, int]:
        """(phase peaks, bytes at the measured step's start, peak of the steps before it); starts afresh."""
        out, start, before = self.phases, self.start, self.before
        self.phases, self.start, self.before, self.active = {}, None, 0, False
        return out, start, before


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")                      # resets VmHWM to the current RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def _rss_peak() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _plan(trainer, device: str):
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    from ftstudio.engine.train.plan_run import row_facts

    cfg = trainer.cfg.replace(compile=bool(getattr(trainer, "compiled", False)), fast_defaults=False)
    own = getattr(getattr(trainer, "_phases", None), "rows", None)      # (prepared, schedule) of this run
    if own is not None:       # its real rows (packed or not): a run on short rows is planned at its longest batch
        prepared, sched = own
        rows = row_facts(prepared, cfg, prepared.task, sched.total_steps)
    else:
        longest, later = getattr(trainer, "_pairs_rows", None) or (cfg.data.seq_len, None)   # dpo / simpo pairs
        rows = RowFacts(count=0, longest=longest, fill=1.0, padded=False, total_steps=cfg.train.max_steps or 0,
                        later=later)
    return plan_run(cfg, model_config=trainer._model_config, device=device, rows=rows).plan


def snapshot(trainer, model, device: str) -> MemorySnapshot:
    """``measure`` of the run now, with the phases measured since the last snapshot and, on CUDA,
    ``planned_peak`` / ``planned_phases`` of its plan."""
    from ftstudio.engine.memory import measure

    snap = measure(model, trainer.optimizer, device, trainer.step)
    meter = getattr(trainer, "_phases", None)
    if meter is not None:
        phases, start, before = meter.take()
        if phases:
            snap.measured_phases = phases
            if snap.allocated_peak is not None:         # the meter reset the allocator's peak at each phase
                snap.allocated_peak = max(snap.allocated_peak, before, *phases.values())
                snap.activations = max(0, snap.allocated_peak - snap.weights - snap.gradients - snap.optimizer)
            elif start is not None and ("forward" in phases or "backward" in phases):
                step_peak = max(phases.get("forward", 0), phases.get("backward", 0))
                snap.activations = max(0, step_peak - start - snap.gradients)
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
        trainer._plan_seen = 0
        trainer.report(LogLine(f"Memory plan ({plan.method}): allocator peak {plan.peak_allocated / 1e9:.2f} GB "
                               f"at the {plan.peak_phase}"))
    if plan and snap.allocated_peak:
        # Said once, from the second snapshot: the first step's forward and backward run before the optimizer has
        # made its state (it is made by the first step), so its peak is below the plan's by that state.
        trainer._plan_seen = max(getattr(trainer, "_plan_seen", 0), snap.allocated_peak)
        if snap.step > 1 and not getattr(trainer, "_plan_said", False):
            trainer._plan_said = True
            seen = trainer._plan_seen
            err = (plan.peak_allocated - seen) / seen
            trainer.report(LogLine(f"Memory plan against the allocator: planned {plan.peak_allocated / 1e9:.2f} GB, "
                                   f"measured {seen / 1e9:.2f} GB over steps 1–{snap.step} ({err:+.1%})"))
    if plan:
        snap.planned_peak = plan.peak_allocated
        snap.planned_phases = {k[6:]: v for k, v in plan.parts.items() if k.startswith("phase:")}
    return snap
