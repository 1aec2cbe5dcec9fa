"""The plan of the run ``train`` would start: the same config, the fast defaults' choices (packing, compile) made
by the trainer's own decision function (train/fast_path.py), and the real rows' lengths when the data can be read.

Without the data the plan assumes rows that fill ``seq_len`` (the longest batch the run can see) and says so;
the compile decision then needs the run's length (``max_steps``), else it is said to be undecided and planned as
the eager step (which holds more than the compiled one: the plan errs high).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from ftstudio.core.config import RunConfig
from ftstudio.engine.memory.plan import MemoryBreakdown
from ftstudio.engine.train.trace_loss import trainer_loss  # noqa: F401 (the tracer's loss, planned here)


@dataclass
class RunPlan:
    plan: MemoryBreakdown
    config: RunConfig               # the config the trainer would train with (fast defaults applied)
    lines: list[str] = field(default_factory=list)   # what was decided and assumed, one line each
    seq_len: int = 0                # the longest batch planned
    padded: bool = False


@dataclass
class RowFacts:
    count: int
    longest: int
    fill: float                     # mean tokens per row / seq_len
    padded: bool                    # the longest batch holds rows of different lengths
    total_steps: int
    later: int | None = None        # dpo / simpo: the longest batch after the first step (train/dpo_plan.py)


def _device(run: RunConfig, device: str | None) -> str:
    d = device or run.hardware.device
    if d == "auto":
        from ftstudio.engine.hardware import list_gpus
        d = "cuda:0" if list_gpus() else "cpu"
    return "cuda:0" if d == "cuda" else d


def read_rows(run: RunConfig, task: str | None = None) -> RowFacts:
    """Tokenise the run's data as the trainer does and count what the plan needs (raises DataError / ModelError)."""
    from ftstudio.core.config import check_method_format
    from ftstudio.engine import data as data_mod
    from ftstudio.engine import models as models_mod
    from ftstudio.engine.train.schedule import plan_schedule, row_stats

    info = models_mod.describe_model(run.model.source, trust_remote_code=run.model.trust_remote_code)
    report = data_mod.check_data(run.data, task=None if run.model.task == "auto" else run.model.task,
                                 seed=run.train.seed)
    check_method_format(run.train.method, report.format)   # the run would refuse it: so does its plan
    task = task or models_mod.resolve_task(run.model.task, info, report.format)
    models_mod.quiet_transformers()
    tokenizer = models_mod.load_tokenizer(run.model)
    prepared = data_mod.prepare_data(run.data, tokenizer, task=task, seed=run.train.seed)
    sched = plan_schedule(run, len(prepared.train), 0, *row_stats(prepared.train, [], run))
    return row_facts(prepared, run, task, sched.total_steps)


def row_facts(prepared, run: RunConfig, task: str, total_steps: int) -> RowFacts:
    """What the plan needs of prepared rows (``read_rows``; the trainer's own rows, packed or not, for the plan
    it logs beside what it measures: train/memory_log.py)."""
    lengths = sorted(len(r["input_ids"]) for r in prepared.train)
    s = run.data.seq_len
    longest = min(s, lengths[-1]) if lengths else s
    later = None
    if prepared.format == "preference":      # pairs: the longer answer, held-out pairs too (train/dpo_plan.py)
        from ftstudio.engine.train.dpo import later_longest, longest_pair
        longest, later = longest_pair(prepared, s), later_longest(run, prepared)
    top = lengths[-run.train.batch_size:] if lengths else []
    # a classifier's batches always carry a mask; transformers drops an all-ones one before SDPA (its rows then
    # attend as unpadded rows do), so only rows of different lengths anywhere in the data make it a padded batch
    padded = bool(top) and (min(top) != max(top) or task == "classification" and lengths[0] != lengths[-1])
    return RowFacts(count=len(lengths), longest=longest, fill=sum(lengths) / max(1, len(lengths)) / s,
                    padded=padded, total_steps=total_steps, later=later)


_KEPT: dict = {}      # the last rows read: (key, RowFacts); the GUI plans again on every edit of the form


def kept_rows(run: RunConfig, task: str) -> RowFacts:
    """:func:`read_rows`, kept while the model, task, data and training settings and the data file stay the same."""
    import os

    path = run.data.dataset
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
    except (OSError, TypeError, ValueError):
        stamp = None                          # a hub name or a folder: its settings are the key
    key = (run.model.source, task, repr(run.data), repr(run.train), stamp)
    if _KEPT.get("key") != key:
        _KEPT.clear()
        _KEPT.update(key=key, rows=read_rows(run, task))
    return _KEPT["rows"]


def plan_run(run: RunConfig, *, model_config: dict | None = None, gpus: int | None = None, device: str | None = None,
             rows: RowFacts | None = None, read_data: bool = True, trace: bool = True) -> RunPlan:
    """The plan of the run ``train`` would start with ``run`` (see the module docstring)."""
    from ftstudio.engine.memory.shape import load_shape
    from ftstudio.engine.memory.traced import plan as traced_plan
    from ftstudio.engine.models import shape_from_config
    from ftstudio.engine.train import fast_path

    if model_config is None:
        shape, model_config = load_shape(run.model.source)
        source = run.model.source
    else:
        shape, source = shape_from_config(model_config), None
    gpus = gpus or max(1, len(run.hardware.gpus))
    dev = _device(run, device)
    task = run.model.task if run.model.task != "auto" else ("classification" if shape.is_encoder else "causal-lm")
    lines: list[str] = []
    if rows is None and read_data and run.data.dataset:
        try:
            rows = kept_rows(run, task)
        except Exception as e:  # noqa: BLE001 - the plan stands without the data, and says why
            lines.append(f"Data not read ({str(e).splitlines()[0][:140]}): rows assumed to fill seq_len")
    s = run.data.seq_len
    if rows is not None:
        lines.append(f"Data: {rows.count} training rows, the longest {rows.longest} tokens, rows fill "
                     f"{rows.fill:.0%} of seq_len; {rows.total_steps} steps")
        fill, steps, longest, padded = rows.fill, rows.total_steps, rows.longest, rows.padded
    else:
        fill, longest, padded = 1.0, s, task == "classification"
        steps = run.train.max_steps or 0
        if rows is None and read_data is False or not run.data.dataset:
            lines.append("No data given: rows assumed to fill seq_len (the longest batch possible)")
    pairs = run.train.method != "sft"        # dpo / simpo: B pairs are 2B padded rows, never packed
    chosen, said = fast_path.choose(run, dev, task="preference" if pairs else task, rows_fill=fill,
                                    total_steps=max(steps, 1), params=shape.params,
                                    fp8=fast_path.fp8_if_compiled(run, dev, shape.params))
    if not steps and run.memory.fast_defaults and dev.startswith("cuda") and not run.memory.compile:
        said = [ln for ln in said if "compile" not in ln]
        chosen["compile"] = False
        lines.append("Fast defaults: compile undecided (the run's length is unknown: give --max-steps or the "
                     "data); planned uncompiled, which holds more")
    lines += said
    eff = run.replace(compile=chosen["compile"], packing=chosen["packing"])
    eff = _as_trained(eff, dev, shape.params, gpus, lines)
    if chosen["packing"] and task == "causal-lm":
        longest, padded = s, False           # packed rows fill seq_len, one document mask per row
    traced_at = None
    if run.memory.fast_defaults and dev.startswith("cuda") and gpus == 1:
        # the trainer's own budget fit (fast_path.fit_memory): the plan shows the run it will start
        traced_at = fast_path.traced_planner(dev, seq_len=longest, padded=padded,
                                             trust_remote_code=run.model.trust_remote_code, source=source)
        eff = fast_path.fit_memory(eff, dev, model_config, lambda ev: lines.append(ev.message),
                                   confirm=None if pairs or not trace else traced_at,
                                   fp8_optional=run.memory.fp8 == "auto")
    plan_at = functools.partial(traced_plan, model_config, eff, gpus, dev, padded=padded or pairs,
                                trust_remote_code=run.model.trust_remote_code, source=source, trace=trace,
                                loss_fn=trainer_loss)
    if pairs:                                # the trainer's own pair step, its reference option and loss path
        from ftstudio.engine.train.dpo_plan import plan_pairs
        plan, padded = plan_pairs(plan_at, eff, longest, rows.later if rows is not None else None), True
    elif traced_at is not None and trace:
        plan = traced_at(model_config, eff)  # the chooser's traced plan of this run, when it made one
    else:
        plan = plan_at(seq_len=longest)
    return RunPlan(plan=plan, config=eff, lines=lines, seq_len=longest, padded=padded)


def _as_trained(eff: RunConfig, dev: str, params: int, gpus: int, lines: list[str]) -> RunConfig:
    """Whether FP8 "auto" turns on, by the trainer's own function (train/fp8.decide), said in ``lines``; the memory
    budget's choices follow in plan_run (fast_path.fit_memory). The plan is then of that run, and says where it is
    outside what was checked on a GPU (memory/checked.py)."""
    from ftstudio.engine.train.fp8 import decide_here

    if eff.memory.fp8 == "auto":
        recipe, said = decide_here("auto", dev, compiled=bool(eff.memory.compile), params=params, gpus=gpus,
                                   capability=False)
        eff = eff.replace(fp8=recipe or "off")
        lines += [said] if said else []
    return eff


__all__ = ["RunPlan", "RowFacts", "plan_run", "read_rows", "trainer_loss"]
