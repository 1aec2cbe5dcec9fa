"""The fast path a one-GPU run gets without asking (``memory.fast_defaults``, on by default).

On one CUDA device, what is safe for the run turns on even where its own field says off: packed rows with
per-document masks for a causal LM whose rows are mostly shorter than ``seq_len`` (no padding computed),
``torch.compile`` per block with the compiled head + loss when the run is long enough to repay compiling
(train/compiling.py's rule, for a run without flags and for ``--preset fastest`` alike), and, where the run is
planned over the card's memory (or ``--gpu-memory``), the fastest options that fit (train/fastest.py).
Each choice, and each reason it stays off (the bundled app, no inductor/triton, a classifier, rows that
already fill ``seq_len``, a short run), is one log line. A field set to true stays on; CPU runs and
``fast_defaults: false`` run exactly the fields as written; several GPUs (FSDP) get only the compile decision (so
that Fastest, which leaves compile to the rule, still compiles a long sharded run), packing and the memory budget
as written.

The run's own config (config.yaml, resume checks) keeps the user's fields: the trainer gets a copy.
"""
from __future__ import annotations

import sys

from ftstudio.core.events import LogLine
from ftstudio.engine.train.compiling import (COMPILE_GAIN, COMPILE_SECONDS, EAGER_FLOPS,  # noqa: F401
                                             compile_pays, inductor_available)

PACK_BELOW = 0.75        # pack when the mean row fills less than this share of seq_len


def choose(cfg, device: str, *, task: str, rows_fill: float, total_steps: int, params: int,
           frozen: bool | None = None, inductor: bool | None = None, fp8: str = "off") -> tuple[dict, list[str]]:
    """{"compile": bool, "packing": bool} for this run and the log lines that say why (pure logic, no torch).
    ``rows_fill``: mean tokens per row / seq_len (before packing). ``fp8``: the recipe FP8 "auto" would turn on
    if the run compiled (:func:`fp8_if_compiled`): compiling then also brings FP8's speed, and repays sooner."""
    chosen = {"compile": bool(cfg.memory.compile), "packing": bool(cfg.data.packing)}
    if not cfg.memory.fast_defaults or not device.startswith("cuda"):
        return chosen, []
    several = len(cfg.hardware.gpus) > 1         # FSDP: the compile decision only
    frozen = getattr(sys, "frozen", False) if frozen is None else frozen
    lines = []
    from ftstudio.engine.train.fastest import SPEED
    then = SPEED["fp8"][0] if fp8 in ("tensorwise", "rowwise") and not cfg.memory.compile else 1.0
    with_fp8 = f", with FP8 ({fp8}), which turns on only in a compiled run" if then > 1.0 else ""
    pays, eager_s = compile_pays(total_steps, params, cfg.train.batch_size * cfg.data.seq_len * cfg.train.grad_accum,
                                 then=then)
    if not chosen["packing"] and not several:
        if task != "causal-lm":
            rows = "preference pairs are" if task == "preference" else "a classifier's rows are"
            lines.append(f"Fast defaults: packing off ({rows} not packed)")
        elif rows_fill >= PACK_BELOW:
            lines.append(f"Fast defaults: packing off (rows fill {rows_fill:.0%} of seq_len already)")
        elif not pays:
            # Packed rows attend through flex_attention's block masks, which compile on the first step and
            # again for new shapes (~20 s for SmolLM2 on the H200: its 34-step run took 107 s against 71 s
            # padded). A short run pads instead.
            lines.append(f"Fast defaults: packing off (rows fill {rows_fill:.0%} of seq_len, but {total_steps} "
                         f"steps, about {eager_s:.0f} s, would not repay compiling the per-document attention; "
                         "--packing forces it)")
        else:
            chosen["packing"] = True
            lines.append(f"Fast defaults: packing on (rows fill {rows_fill:.0%} of seq_len; per-document masks, "
                         "no attention across examples; --no-fast-defaults to pad instead)")
    if not chosen["compile"]:
        if frozen:
            lines.append("Fast defaults: compile off (no compiler inside the bundled app)")
        elif not (inductor_available() if inductor is None else inductor):
            lines.append("Fast defaults: compile off (torch.compile's inductor needs triton, not installed)")
        elif not pays:
            lines.append(f"Fast defaults: compile off ({total_steps} steps, about {eager_s:.0f} s uncompiled, "
                         f"would not repay ~{COMPILE_SECONDS:.0f} s of compiling{with_fp8}; --compile forces it)")
        else:
            chosen["compile"] = True
            lines.append(f"Fast defaults: compile on ({total_steps} steps, about {eager_s:.0f} s uncompiled{with_fp8}; "
                         "blocks and the head + loss compiled; --no-fast-defaults to run eagerly)")
    return chosen, lines


def check_options(cfg, device: str, report) -> None:
    """Before the model loads or the run folder is made: compile asked on the CPU is said (the run trains
    uncompiled); an explicit FP8 mode that cannot run on this device is refused (train/fp8.decide's one line)."""
    if cfg.memory.compile and not device.startswith("cuda"):
        report(LogLine("compile is for CUDA runs; training uncompiled on the CPU", "warning"))
    if cfg.memory.fp8 not in ("off", "auto"):
        from ftstudio.engine.train.fp8 import decide_here
        decide_here(cfg.memory.fp8, device, compiled=True, params=0, gpus=max(1, len(cfg.hardware.gpus)))


def apply(cfg, device: str, prepared, info, plan_schedule, report):
    """The trainer's hook: (the config the run trains with, the prepared data, packed if chosen)."""
    if not cfg.memory.fast_defaults or not device.startswith("cuda"):
        return cfg, prepared                                  # exactly the fields as written
    several = len(cfg.hardware.gpus) > 1                      # FSDP: the compile decision only
    seq_len, rows = cfg.data.seq_len, prepared.train
    fill = sum(len(r["input_ids"]) for r in rows) / max(1, len(rows)) / seq_len
    if getattr(prepared.collate, "packed", False):
        fill = 1.0
    pairs = getattr(prepared, "format", None) == "preference"   # dpo / simpo: pairs are padded, never packed
    packed_rows = (_pack(prepared, seq_len) if prepared.task == "causal-lm" and fill < PACK_BELOW
                   and not cfg.data.packing and not pairs and not several else None)       # the step count of a packed run decides compile
    steps = plan_schedule(len(packed_rows[0]) if packed_rows else len(rows), 0).total_steps
    chosen, lines = choose(cfg, device, task="preference" if pairs else prepared.task, rows_fill=fill, total_steps=steps,
                           params=int(info.params or 0), fp8=fp8_if_compiled(cfg, device, int(info.params or 0)))
    for line in lines:
        report(LogLine(line))
    if chosen["packing"] and not cfg.data.packing and packed_rows:
        from ftstudio.engine.data.collate import Collator

        prepared.train, prepared.val = packed_rows
        prepared.collate = Collator(prepared.collate.pad_id, prepared.task, packed=True)
    cfg = cfg.replace(compile=chosen["compile"], packing=chosen["packing"])
    if several:
        return cfg, prepared                                  # the plan of a sharded run is not this room's
    planned = cfg.replace(fp8=fp8_auto(cfg, device, int(info.params or 0)))
    fitted = fit_memory(planned, device, getattr(info, "config", None), report,
                        fp8_optional=cfg.memory.fp8 == "auto")
    # FP8 "auto" stays in the run's config (fp8.setup decides it again, with its probe) unless the budget's choice
    # turned it off
    off = fitted.memory.fp8 == "off" and planned.memory.fp8 != "off"
    return fitted.replace(fp8="off" if off else cfg.memory.fp8), prepared


def fp8_if_compiled(cfg, device: str, params: int) -> str:
    """The FP8 recipe "auto" would turn on for this run if it compiled ("off" where it would not, or where FP8 is
    set explicitly: an explicit recipe does not depend on compile)."""
    if cfg.memory.fp8 != "auto" or cfg.memory.compile or not device.startswith("cuda"):
        return "off"
    return fp8_auto(cfg.replace(compile=True), device, params)


def fp8_auto(cfg, device: str, params: int) -> str:
    """``memory.fp8`` as the trainer will run it: "auto" becomes the recipe train/fp8.decide turns on for this run
    (on this GPU), else "off"; an explicit setting is kept."""
    if cfg.memory.fp8 != "auto":
        return cfg.memory.fp8
    from ftstudio.engine.train.fp8 import decide_here

    recipe, _ = decide_here("auto", device, compiled=bool(cfg.memory.compile), params=params,
                            gpus=max(1, len(cfg.hardware.gpus)))
    return recipe or "off"


def fit_memory(cfg, device: str, model_config: dict | None, report, *, confirm="traced", fp8_optional: bool = False):
    """``cfg`` with the fastest options that fit the memory budget (train/fastest.py), each choice logged.
    ``fp8_optional``: ``cfg``'s FP8 recipe came from "auto", so the chooser may turn it off.
    ``confirm``: how the final candidates are re-planned ("traced": memory/traced.py with the trainer's loss, at
    ``seq_len``; a callable ``(model_config, run) -> MemoryBreakdown``; None: the closed form alone)."""
    from ftstudio.engine.train import fastest

    budget, compare = fastest.budget_for(cfg, device)
    if budget is None or not model_config:
        report(LogLine(f"Memory budget: not checked ({compare if budget is None else 'no model config'})"))
        return cfg
    if confirm == "traced":          # preference pairs: the closed form alone (the traced pair step is dpo_plan.py's)
        confirm = (traced_planner(device, trust_remote_code=cfg.model.trust_remote_code)
                   if cfg.train.method == "sft" else None)
    try:
        fit = fastest.choose(cfg, model_config, budget, compare=compare, device=device, confirm=confirm,
                             fp8_optional=fp8_optional)
    except Exception as e:  # noqa: BLE001 - a model the planner cannot read: the run goes on as set, and says so
        report(LogLine(f"Memory budget: not planned ({type(e).__name__}: {str(e).splitlines()[0][:120]}); the run "
                       "starts as set", "warning"))
        return cfg
    for line in fit.lines:
        report(LogLine(line))
    if fit.leaves.get("precision") not in (None, cfg.hardware.precision):
        report(LogLine(f"Precision: {fit.leaves['precision']} for the memory budget (the model line above names the "
                       "configured one)"))
    return cfg.replace(**fit.leaves) if fit.leaves else cfg


def traced_planner(device: str, *, seq_len: int | None = None, padded: bool = False, trust_remote_code: bool = False,
                   source: str | None = None):
    """``(model_config, run) -> MemoryBreakdown``: memory/traced.py's plan of one GPU with the trainer's loss
    (what plan_run plans), each run's plan kept (the chooser and the final plan ask for the same run)."""
    kept: dict = {}

    def plan(model_config, run):
        key = repr(run)
        if key not in kept:
            from ftstudio.engine.memory.traced import plan as traced_plan
            from ftstudio.engine.train.trace_loss import trainer_loss
            kept[key] = traced_plan(model_config, run, 1, device, seq_len=seq_len, padded=padded,
                                    trust_remote_code=trust_remote_code, source=source, loss_fn=trainer_loss,
                                    plan_of=plan)
        return kept[key]
    return plan


def _pack(prepared, seq_len: int):
    from ftstudio.engine.data.collate import pack

    return pack(prepared.train, seq_len), pack(prepared.val, seq_len)
