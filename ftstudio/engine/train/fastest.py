"""The fastest run for the memory the user has: on one GPU, when the run as set (after the fast defaults' compile
and packing choices) is planned over the budget, choose among the options FT Studio has — the chunked or fused
loss, activation checkpointing (of every block, with its inputs offloaded to pinned host memory or not, or of the
first k blocks only, the others keeping their activations in the memory left), 8-bit AdamW states, the
optimizer step inside backward, and the micro-batch × accumulation that keeps the effective batch — the
combination with the highest planned speed whose planned peak fits, and say why (what was chosen, what faster
combinations were rejected and for how many GB).

The budget is ``hardware.gpu_memory`` (GB of tensors at once: the planned peak allocated), else the card's own
memory (the planned total, CUDA context included). Memory comes from the planner's public
``memory.estimate`` (its closed form: fast enough to plan every combination; issue 29 owns its accuracy).
Speed is a product of per-option factors, each measured on an H100 on the Llama-3.2-1B shape (4 × 2048) where
the table says so, estimated otherwise; only their order matters, and the run's own tokens/s is the measurement.

FP8: where ``memory.fp8`` is "auto" and train/fp8.decide turns it on for this run (compiled, 1 B parameters or
more, FP8 tensor cores, torchao), fast_path.fit_memory plans the run with FP8 linear layers and lets the chooser
turn FP8 off (``fp8_optional``): FP8 is smaller and, alone, faster (``SPEED["fp8"]``), but with the step inside
backward it measured slower than bf16 (``SPEED["fp8_in_backward"]``). A recipe the user set stays.

Kept as set: a precision the user chose (Fastest sets pure bf16; precision "auto" may become pure bf16 with
stochastic-rounding AdamW, Fastest's numerics, when the run as set does not fit), compile (the repay rule decides
it), and every option the user turned on (an option set true stays on). Pure logic, no torch.
"""
from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass, field

# Relative speed of each option against the same run without it (tokens/s ratio), all on the H100, Llama-3.2-1B
# shape, 4 × 2048, compiled. "measured": issue 33's table (each row against HF Trainer in its own group: Fastest
# 1.65×, --loss chunked 1.53×, checkpointing 1.33×, Largest 0.60×). "derived": from a measured combination over
# the measured factors of its other options: 8-bit states from tests/benchmarks/pareto.py's 10.72 GB run (pure
# bf16 + checkpointing + 8-bit + micro-batch 2: 24.2 k against Fastest's 64.3 k, so 0.376 / 0.806 / 0.93); the step
# in backward from the third call's 10.72 GB run, offload from the fourth's (below).
# "estimated": not measured.
SPEED: dict[str, tuple[float, str]] = {
    "chunked_liger": (0.923, "measured"),      # Liger's fused linear cross-entropy against the compiled head
    "chunked_sliced": (0.85, "estimated"),     # checkpointed slices (no liger-kernel): the head runs twice
    "checkpointing": (0.806, "measured"),
    "offload": (0.82, "derived"),             # offloaded (reentrant) checkpointing: the fourth call's 10.72 GB run
    # (FP8, full loss, every block checkpointed and offloaded, the step in backward) 28.8 k against the fifth's 33.0 k
    # (FP8, chunked loss, 15 blocks checkpointed, the step in backward): 0.873 / 1.083 (loss) / 0.988 (one block)
    "adamw8bit": (0.99, "estimated"),          # FT Studio's FP8-state AdamW (train/fp8_state_adamw.py): one Triton
    # pass per tensor reading 10 bytes a parameter where the bf16-state kernel reads 14; the step is ~5 % of a step
    "adamw8bit_torchao": (0.50, "derived"),    # torchao's 8-bit AdamW step: slow beside the fused bf16 kernel
    "in_backward": (0.953, "derived"),        # pure bf16 + chunked + checkpointing + the step in backward: 45.6 k
                                               # against Fastest's 64.3 k in one call (0.709 / 0.923 / 0.806)
    "pure_bf16": (1.115, "measured"),         # Fastest's pure bf16 against bf16-mixed (61.9 k / 55.5 k, compiled)
    "fp8": (1.126, "measured"),               # torchao tensorwise, compiled: 72.4 k against Fastest's 64.3 k (one call)
    "fp8_in_backward": (0.715, "derived"),    # FP8 where the step runs inside backward, against bf16: the fifth call's
    # 10.72 GB run (FP8, chunked loss, the first 15 of 16 blocks checkpointed, the step in backward) 33.0 k against
    # the third call's 45.6 k for the same options in bf16 with every block checkpointed (× 1.012 for the block):
    # two calls on H100s. Which part of that run slows FP8 is not isolated; FP8 with 4 blocks checkpointed and the
    # step after backward ran as its factors said (69.4 k, the fourth call).
}
# Checkpointing only the first k of L blocks (memory.checkpoint_blocks) recomputes k/L of what full checkpointing
# does: the step takes 1 + (1/0.806 - 1)·k/L of its time ("derived" from the measured factor, linear in blocks).
MICRO_TOKENS_HALF = 667    # a micro-batch of t tokens runs at t / (t + 667) of the matmuls' rate: 0.93 for 2 × 2048
# against 4 × 2048, as measured (59.8 k against Fastest's 64.3 k, pareto.py, two calls on one H100)


@dataclass
class Candidate:
    leaves: dict
    speed: float                 # planned, relative to the run as set with nothing turned on to save memory
    planned: int                 # bytes compared with the budget
    fits: bool = False
    traced: bool = False         # ``planned`` is the traced plan's (_confirm)


@dataclass
class Fit:
    leaves: dict = field(default_factory=dict)    # what changes (empty: the run as set)
    lines: list[str] = field(default_factory=list)


def _micro_speed(tokens: int, ref: int) -> float:
    eff = lambda t: t / (t + MICRO_TOKENS_HALF)  # noqa: E731
    return eff(tokens) / eff(ref)


def _checkpointed_speed(blocks: int, layers: int) -> float:
    share = min(1.0, blocks / layers) if blocks and layers else 1.0
    return 1.0 / (1.0 + (1.0 / SPEED["checkpointing"][0] - 1.0) * share)


def _fp8_key(leaves: dict, cfg) -> str | None:
    if leaves.get("fp8", cfg.memory.fp8) not in ("tensorwise", "rowwise"):
        return None
    return "fp8_in_backward" if leaves.get("optimizer_in_backward", cfg.memory.optimizer_in_backward) else "fp8"


def _fp8_speed(leaves: dict, cfg) -> float:
    """FP8's factor for the run ``cfg`` with ``leaves`` against the same run in bf16 (1.0 with FP8 off)."""
    key = _fp8_key(leaves, cfg)
    return SPEED[key][0] if key else 1.0


def _lowbit_key(lowbit) -> str:
    """SPEED's key for 8-bit states from the library that runs them (memory.lowbit: "ftstudio", "torchao", ...)."""
    return "adamw8bit" if lowbit in ("ftstudio", True) else "adamw8bit_torchao"


def planned_speed(leaves: dict, cfg, *, liger: bool, layers: int = 0, lowbit="ftstudio") -> float:
    """The product of the option factors for the options ``leaves`` turn on beyond ``cfg`` (micro-batch included;
    ``layers``: the model's blocks, for checkpointing some of them; ``lowbit``: who runs 8-bit states)."""
    m, s = cfg.memory, 1.0
    if leaves.get("precision") == "bf16" and cfg.hardware.precision != "bf16":
        s *= SPEED["pure_bf16"][0]
    if leaves.get("loss", m.loss) == "chunked" and m.loss != "chunked":
        s *= SPEED["chunked_liger" if liger else "chunked_sliced"][0]
    if leaves.get("activation_checkpointing", m.activation_checkpointing) and not m.activation_checkpointing:
        s *= _checkpointed_speed(leaves.get("checkpoint_blocks", m.checkpoint_blocks), layers)
    if leaves.get("offload_activations", m.offload_activations) and not m.offload_activations:
        s *= SPEED["offload"][0]
    if leaves.get("optimizer", cfg.optim.optimizer) == "adamw8bit" and cfg.optim.optimizer != "adamw8bit":
        s *= SPEED[_lowbit_key(lowbit)][0]
    if leaves.get("optimizer_in_backward", m.optimizer_in_backward) and not m.optimizer_in_backward:
        s *= SPEED["in_backward"][0]
    s *= _fp8_speed(leaves, cfg) / _fp8_speed({}, cfg)
    seq = cfg.data.seq_len
    return s * _micro_speed(leaves.get("batch_size", cfg.train.batch_size) * seq, cfg.train.batch_size * seq)


def candidates(cfg, *, lowbit, layers: int = 0, fp8_optional: bool = False) -> list[dict]:
    """Every combination of the options beyond ``cfg`` (leaves to set), the run as set first. ``lowbit``: the
    library that runs 8-bit states here (memory.lowbit; falsy: none, True: one that rounds bf16 weights
    stochastically, as FT Studio's and torchao's do; "bitsandbytes": with fp32 weights only). With ``layers``
    (the model's blocks), checkpointing also comes for the first k blocks only (k < layers; without offload);
    with ``fp8_optional`` (FP8 came from "auto"), each combination comes with FP8 off too."""
    m, t = cfg.memory, cfg.train
    fp8s = (m.fp8, "off") if fp8_optional and m.fp8 in ("tensorwise", "rowwise") else (m.fp8,)
    effective = t.batch_size * t.grad_accum
    micro = [b for b in range(t.batch_size, 0, -1) if effective % b == 0]
    yes_no = lambda on: (True,) if on else (False, True)  # noqa: E731 - an option set true stays on
    losses = ("chunked",) if m.loss == "chunked" else ("full", "chunked")
    opts = (cfg.optim.optimizer, "adamw8bit") if cfg.optim.optimizer == "adamw" and lowbit else (cfg.optim.optimizer,)
    # bitsandbytes' 8-bit step rounds bf16 weights to nearest, which loses most small updates (96 % of the first
    # step's on the H100): with it, 8-bit states come only with fp32 master weights
    in_bwd = (True,) if m.optimizer_in_backward else (
        (False,) if cfg.hardware.precision == "fp16-mixed" else (False, True))
    # precision "auto" (nobody chose): pure bf16 with stochastic-rounding AdamW, Fastest's numerics, is a choice
    precisions = (cfg.hardware.precision, "bf16") if cfg.hardware.precision == "auto" else (cfg.hardware.precision,)
    out = []
    for prec, loss, ac, off, opt, ib, b, f8 in itertools.product(
            precisions, losses, yes_no(m.activation_checkpointing), yes_no(m.offload_activations), opts, in_bwd,
            micro, fp8s):
        if off and not ac:
            continue                                  # offload moves checkpointed inputs: it needs checkpointing
        if ib and b != effective:
            continue                                  # the step in backward cannot accumulate micro-batches
        if opt == "adamw8bit" and opt != cfg.optim.optimizer and prec == "bf16" and lowbit == "bitsandbytes":
            continue
        some = (0,) if not ac or off or m.checkpoint_blocks or layers < 2 else (0, *range(1, layers))
        for k in some:                                # 0: every block; k: the first k blocks
            leaves = {"precision": prec, "loss": loss, "activation_checkpointing": ac, "offload_activations": off,
                      "optimizer": opt, "optimizer_in_backward": ib, "batch_size": b, "grad_accum": effective // b,
                      "checkpoint_blocks": k if ac else m.checkpoint_blocks, "fp8": f8}
            out.append({key: v for key, v in leaves.items() if v != cfg.get(key)})
    out.sort(key=lambda d: len(d))                    # the run as set ({}) first
    return out


def describe(leaves: dict, cfg) -> str:
    if not leaves:
        return "the run as set"
    words = ["pure bf16 (stochastic-rounding AdamW)"] if leaves.get("precision") == "bf16" else []
    if leaves.get("loss") == "chunked":
        words.append("chunked loss")
    if leaves.get("activation_checkpointing"):
        words.append("activation checkpointing" + (" offloaded to host memory" if leaves.get("offload_activations")
                                                   else "") + (f" of the first {leaves['checkpoint_blocks']} blocks"
                                                               if leaves.get("checkpoint_blocks") else ""))
    elif leaves.get("offload_activations"):
        words.append("checkpointed inputs offloaded")
    if leaves.get("optimizer") == "adamw8bit":
        words.append("8-bit AdamW states")
    if leaves.get("optimizer_in_backward"):
        words.append("the step inside backward (gradient clipping per tensor)")
    if leaves.get("fp8") == "off":
        words.append("FP8 off")
    if "batch_size" in leaves:
        words.append(f"micro-batch {leaves['batch_size']} × {leaves['grad_accum']} accumulated")
    return ", ".join(words)


CONFIRM_TRACES = 3       # final candidates re-planned by ``confirm`` (the traced plan: ~1–7 s each for a 1B shape)
CONFIRM_OVER = 0.10      # candidates the closed form puts up to this share over the budget are traced too


def choose(cfg, model_config, budget: int, *, compare: str = "peak_allocated", device: str = "cuda:0",
           liger: bool | None = None, lowbit: str | bool | None = None, plan=None, confirm=None,
           fp8_optional: bool = False) -> Fit:
    """The fastest combination planned within ``budget`` bytes (``compare``: the plan's ``peak_allocated`` or
    ``total``). ``plan(model_config, run) -> MemoryBreakdown``: the planner that ranks every combination (default
    ``memory.estimate``, the closed form: fast). ``confirm`` (same signature; the trainer and plan_run pass the
    traced plan, memory/traced.py): the final candidates, fastest first, those the closed form fits or puts at
    most CONFIRM_OVER over the budget, are re-planned by it (at most CONFIRM_TRACES traced) and its figure
    decides where it traced the step; where it fell back to the closed form, the closed form's figure stands."""
    if plan is None:
        from ftstudio.engine.memory import estimate
        plan = lambda mc, run: estimate(mc, run, 1, device=device)  # noqa: E731
    liger = _installed("liger_kernel") if liger is None else liger
    if lowbit is None:        # the trainer's own decision (memory.lowbit): installed and importable here
        from ftstudio.engine.memory.lowbit import lowbit_library
        lowbit = lowbit_library("adamw8bit", probe=True).library
    gb = lambda x: f"{x / 1e9:.1f} GB"  # noqa: E731
    what = "peak allocated" if compare == "peak_allocated" else "total"
    fp8 = (f" with FP8 ({cfg.memory.fp8}) linear layers" if cfg.memory.fp8 in ("tensorwise", "rowwise") else "")
    layers = _layers(model_config)
    seen: list[Candidate] = []
    for leaves in candidates(cfg, lowbit=lowbit, layers=layers, fp8_optional=fp8_optional):
        planned = int(getattr(plan(model_config, cfg.replace(**leaves)), compare))
        c = Candidate(leaves, planned_speed(leaves, cfg, liger=liger, layers=layers, lowbit=lowbit), planned,
                      planned <= budget)
        if not leaves and c.fits:
            return Fit({}, [f"Memory budget {gb(budget)}: the run as set{fp8} is planned at {gb(planned)} ({what}): "
                            "fits, nothing changed"])
        seen.append(c)
    said = _confirm(seen, cfg, model_config, budget, compare, confirm) if confirm is not None else []
    said += _verify(seen, cfg, model_config, budget, compare, confirm) if confirm is not None else []
    fitting = [c for c in seen if c.fits]
    if not fitting:
        least = min(seen, key=lambda c: c.planned)
        return Fit({}, [f"Memory budget {gb(budget)}: nothing FT Studio can turn on fits it (the run as set is planned "
                        f"at {gb(seen[0].planned)}, the smallest combination, {describe(least.leaves, cfg)}, at "
                        f"{gb(least.planned)}); the run starts as set"])
    best = max(fitting, key=lambda c: (c.speed, -c.planned))
    faster = sorted((c for c in seen if c.speed > best.speed and not c.fits), key=lambda c: -c.speed)[:3]
    basis = sorted({SPEED[k][1] for k in _factors(best.leaves, cfg, liger, lowbit)} | (
        {"estimated"} if "batch_size" in best.leaves else set()) | ({"derived"} if best.leaves.get("checkpoint_blocks")
                                                                 else set()))
    lines = [f"Memory budget {gb(budget)}: the run as set{fp8} is planned at {gb(seen[0].planned)} ({what}); fastest that "
             f"fits: {describe(best.leaves, cfg)}, planned at {gb(best.planned)}, about {best.speed:.2f}× the speed of "
             f"the run as set ({' and '.join(basis) or 'measured'} factors, train/fastest.py)"]
    if faster:
        lines.append("Rejected (faster, over the budget): " + "; ".join(
            f"{describe(c.leaves, cfg)} ({c.speed:.2f}×, {gb(c.planned)})" for c in faster))
    return Fit(best.leaves, lines + said)


def _confirm(seen: list[Candidate], cfg, model_config, budget: int, compare: str, confirm) -> list[str]:
    """Re-plan the final candidates with ``confirm`` (in place: ``planned`` and ``fits``); the lines that say so.
    Checkpointing some blocks only keeps the closed form's figure here: it errs high for these runs (10.4 GB
    against 8.7 measured at k = 15 of 16 on the Llama-3.2-1B shape, H100) and the traced plan of such a run
    costs two traces (all blocks and none), which the candidates faster than it had already used. Where the trace
    of a candidate came out above its closed form, the untraced candidates of its family (the same options but
    for checkpointing) count with that shortfall: the closed form plans accumulation with FP8 ~0.8 GB low."""
    queue = sorted((c for c in seen if c.planned <= budget * (1 + CONFIRM_OVER)),
                   key=lambda c: (-c.speed, c.planned))
    traced, lines, low = 0, [], {}
    for c in queue:
        if traced >= CONFIRM_TRACES:
            break
        p = None if c.leaves.get("checkpoint_blocks") else confirm(model_config, cfg.replace(**c.leaves))
        if getattr(p, "method", "") != "traced":
            if c.fits and low.get(_family(c.leaves), 1.0) * c.planned <= budget:
                break                     # the closed form's figure stands for the fastest that fits
            continue
        traced += 1
        before = c.planned
        lines.append(_take_trace(c, p, cfg, budget, compare))
        low[_family(c.leaves)] = max(low.get(_family(c.leaves), 1.0), c.planned / max(before, 1))
        if c.fits:
            break
    dropped: dict[tuple, int] = {}
    for c in seen:
        short = low.get(_family(c.leaves), 1.0)
        if c.fits and not c.traced and short > 1.0 and c.planned * short > budget:
            c.fits = False
            dropped[_family(c.leaves)] = dropped.get(_family(c.leaves), 0) + 1
    for fam, n in dropped.items():
        lines.append(f"{n} untraced candidate{'s' if n > 1 else ''} with {describe(dict(fam), cfg)} counted over the "
                     f"budget: the traced plan of those options ran {low[fam] - 1:.0%} above the closed form")
    return lines


VERIFY_TRACES = 6        # re-plans of the choice itself (checkpointing k blocks: free once a family's ends are traced)


def _verify(seen: list[Candidate], cfg, model_config, budget: int, compare: str, confirm) -> list[str]:
    """The choice itself re-planned by ``confirm`` where it was not yet, until one fits by its traced plan (or
    ``confirm`` cannot trace it): the closed form errs both ways for checkpointing some blocks (high compiled,
    10.4 GB against 8.7 measured; low eager with the sliced chunked loss, 10.3 GB against 11.1 traced), so the run
    that starts is the fastest whose own plan fits, not the closed form's guess."""
    lines: list[str] = []
    for _ in range(VERIFY_TRACES):
        fitting = [c for c in seen if c.fits]
        if not fitting:
            break
        best = max(fitting, key=lambda c: (c.speed, -c.planned))
        if best.traced:
            break
        p = confirm(model_config, cfg.replace(**best.leaves))
        if getattr(p, "method", "") != "traced":
            break                         # not traceable: the closed form's figure stands
        lines.append(_take_trace(best, p, cfg, budget, compare))
    return lines


def _take_trace(c: Candidate, p, cfg, budget: int, compare: str) -> str:
    """``c`` re-planned by its traced plan ``p`` (in place); the line that says so."""
    before, c.planned, c.traced = c.planned, int(getattr(p, compare)), True
    c.fits = c.planned <= budget
    return (f"Traced plan of {describe(c.leaves, cfg)}: {c.planned / 1e9:.1f} GB (closed form {before / 1e9:.1f} GB): "
            f"{'fits' if c.fits else 'over the budget'}")


def _family(leaves: dict) -> tuple:
    """A candidate's options but for checkpointing (which blocks): candidates the closed form errs alike on."""
    skip = ("activation_checkpointing", "checkpoint_blocks", "offload_activations")
    return tuple(sorted((k, v) for k, v in leaves.items() if k not in skip))


def _factors(leaves: dict, cfg, liger: bool, lowbit="ftstudio") -> list[str]:
    keys = ["pure_bf16"] if leaves.get("precision") == "bf16" else []
    used, as_set = _fp8_key(leaves, cfg), _fp8_key({}, cfg)
    keys += sorted({used, as_set} - {None}) if used != as_set else []      # FP8's factors where they changed
    if leaves.get("loss") == "chunked":
        keys.append("chunked_liger" if liger else "chunked_sliced")
    for leaf, key in (("activation_checkpointing", "checkpointing"), ("offload_activations", "offload"),
                      ("optimizer_in_backward", "in_backward")):
        if leaves.get(leaf):
            keys.append(key)
    if leaves.get("optimizer") == "adamw8bit":
        keys.append(_lowbit_key(lowbit))
    return keys


def _layers(model_config) -> int:
    """The model's blocks (0 where the config does not say: checkpointing is then all or nothing)."""
    try:
        from ftstudio.engine.models import shape_from_config
        return int(shape_from_config(model_config).layers)
    except Exception:  # noqa: BLE001 - a config the shape reader does not know: no per-block choice
        return 0


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def budget_for(cfg, device: str) -> tuple[int | None, str]:
    """(bytes, what the plan is compared with): ``hardware.gpu_memory`` against the planned peak allocated, else
    the card's memory (NVML) against the planned total; (None, why) when neither is known."""
    if cfg.hardware.gpu_memory:
        return int(cfg.hardware.gpu_memory * 1e9), "peak_allocated"
    from ftstudio.engine.hardware import list_gpus
    index = int(device.split(":")[1]) if ":" in device else 0
    gpus = {g.index: g for g in list_gpus()}
    if index in gpus:
        return gpus[index].total_bytes, "total"
    return None, "the card's memory is unknown (no NVML)"
