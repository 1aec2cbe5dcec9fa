"""`ftstudio estimate`: the plan for a model folder / config.json / cached hub id, or for a bare
(params, hidden, layers) as in the seed's table. No torch import: it must answer in well under 2 s."""
from __future__ import annotations

import math

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError

from ftstudio.engine.memory.plan import MemoryBreakdown, estimate, host_bytes, textbook_bytes
from ftstudio.engine.memory.shape import check_model_config, load_shape
from ftstudio.engine.memory.solve import solve
from ftstudio.engine.models import ModelShape, shape_from_config

# The seed's table: LLaMA sizes, s = 2048, b = 1, k = 12, 80 GB cards.
SEED_MODELS = (("LLaMA-7B", 7e9, 4096, 32), ("LLaMA-13B", 13e9, 5120, 40), ("LLaMA-70B", 70e9, 8192, 80))


def seed_table(seq_len: int = 2048, batch_size: int = 1, gpu_gb: int = 80) -> list[dict]:
    """Rows of the seed's table, computed the seed's way (whole GB truncated, then ceil-divided by 80)."""
    rows = []
    for name, n, d, layers in SEED_MODELS:
        states = 16 * n / 1e9
        act = seq_len * batch_size * d * layers * 12 / 1e9
        total = states + act
        rows.append({"model": name, "params": int(n), "weights_grads_optimizer_gb": round(states, 1),
                     "activations_gb": round(act, 1), "total_gb": round(total, 1),
                     "min_gpus": max(1, -(-int(total) // gpu_gb))})
    return rows


def synthetic_shape(params: float, hidden: int, layers: int, vocab: int = 32000) -> ModelShape:
    """A LLaMA-like shape with about ``params`` parameters (MLP width solved for), for --params/--hidden/--layers."""
    heads = max(1, hidden // 128)
    # params ≈ 2·V·d (embedding + head) + L·(4d² + 3·d·i) + norms
    i = max(hidden, int((params - 2 * vocab * hidden - 4 * layers * hidden ** 2) / (3 * layers * hidden)))
    cfg = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "vocab_size": vocab,
           "num_attention_heads": heads, "num_key_value_heads": heads, "intermediate_size": i,
           "tie_word_embeddings": False}
    return shape_from_config(cfg)


def estimate_report(model: str | None = None, *, params: float | None = None, hidden: int | None = None,
                    layers: int | None = None, seq_len: int | None = 2048, batch_size: int = 1,
                    precision: str = "bf16-mixed", optimizer: str = "adamw", loss: str = "full",
                    activation_checkpointing: bool = False, grad_accum: int = 1, gpus: int = 1,
                    gpu_memory_gb: float | None = 80.0, run_config: RunConfig | None = None,
                    model_config: dict | None = None, cap_seq_len: bool = False, plan_fn=None) -> dict:
    """The --json payload of ``ftstudio estimate`` (bytes per GPU). Raises ModelError / ConfigError.
    ``seq_len=None``: 2048, or the model's context length when that is shorter; ``cap_seq_len``: a longer
    ``seq_len`` (a config's, not asked for) is cut to the context instead of refused. ``plan_fn(run, config)``:
    (MemoryBreakdown, lines) of the plan to report (the traced plan of the run train would start), else the
    closed form; the solver's advice stays the closed form's."""
    _check_sizes(params=params, hidden=hidden, layers=layers, seq_len=seq_len, batch_size=batch_size,
                 grad_accum=grad_accum, gpus=gpus, gpu_memory_gb=gpu_memory_gb)
    if model is None and model_config is None and not (params and hidden and layers):
        raise ConfigError("model", "give a MODEL (folder, config.json or cached hub id) or --params, --hidden "
                                   "and --layers")
    if model is None and model_config is None:
        floor = 2 * 32000 * hidden + 4 * layers * hidden ** 2
        if params < floor:
            raise ConfigError("--params", f"{params:.3g} parameters cannot hold --hidden {hidden} and --layers "
                                          f"{layers} (their embeddings and attention alone are {floor:.3g}); check "
                                          "the units: 7e9 is a 7B model")
    if model_config is not None:
        check_model_config(model_config, "config")
        shape, source, cfg = shape_from_config(model_config), "config", model_config
    elif model is not None:
        (shape, cfg), source = load_shape(model), model
    else:
        shape, source, cfg = synthetic_shape(params, hidden, layers), f"{params:.3g} params", {}
    seq_len = _check_positions(cfg, seq_len, source, cap_seq_len)
    base = run_config or RunConfig()
    run = base.replace(device="cuda" if base.hardware.device == "cpu" else base.hardware.device,
                       seq_len=seq_len, batch_size=batch_size, precision=precision, optimizer=optimizer,
                       loss=loss, activation_checkpointing=activation_checkpointing, grad_accum=grad_accum)
    n = shape.params if params is None or model is not None else int(params)
    closed = estimate(shape, run, gpus)
    est, lines = plan_fn(run.replace(source=model), cfg) if plan_fn and cfg else (closed, [])
    host = host_bytes(shape, run, gpus, shard_bytes=_largest_shard(model))
    report = {
        "model": source, "model_type": shape.model_type, "params": n, "params_exact": shape.exact,
        "hidden": shape.hidden, "layers": shape.layers, "vocab": shape.vocab,
        "seq_len": seq_len, "batch_size": batch_size, "precision": precision, "optimizer": optimizer,
        "loss": loss, "activation_checkpointing": activation_checkpointing, "grad_accum": grad_accum,
        "gpus": gpus,
        "textbook_bytes": textbook_bytes(n, shape.hidden, shape.layers, seq_len, batch_size),
        "peak_bytes": est.total, "peak_allocated_bytes": est.peak_allocated,
        "peak_reserved_bytes": est.peak_reserved, "peak_phase": est.peak_phase,
        "breakdown": {"weights": est.weights, "gradients": est.gradients, "optimizer": est.optimizer,
                      "activations": est.activations, "other": est.other, "anchor": est.anchor},
        "max_batch_size": None, "max_seq_len": None, "fits": None, "suggestions": [],
        "gpu_memory_bytes": int(gpu_memory_gb * 1e9) if gpu_memory_gb else None,
        "host_bytes": host, "host_ram_bytes": _host_ram(),
        "method": est.method, "margin": est.margin, "notes": list(est.notes), "choices": list(lines),
        "closed_form_bytes": closed.total, "textbook_omits": textbook_omits(est),
    }
    if gpu_memory_gb:
        adv = solve(shape, run, int(gpu_memory_gb * 1e9), gpus)
        report.update(max_batch_size=adv.max_batch_size, max_seq_len=adv.max_seq_len, fits=adv.fits,
                      suggestions=adv.suggestions[:5], context=shape.context)
        report["min_gpus"] = _min_gpus(shape, run, int(gpu_memory_gb * 1e9))
    if model is None and params:
        report["seed_table"] = seed_table(seq_len=2048, batch_size=1, gpu_gb=int(gpu_memory_gb or 80))
    from ftstudio.engine.memory.reference import reference_costs
    report["train_method"] = run.train.method
    report["reference"] = reference_costs(shape, run, gpus, plan=_option_plan(run, est, plan_fn, model, cfg))
    return report


def _option_plan(run: RunConfig, est: MemoryBreakdown, plan_fn, model, cfg):
    """DPO's plan per reference option by ``plan_fn`` (the run's own option is ``est``), else None (closed form)."""
    if not plan_fn or not cfg or run.train.method != "dpo":
        return None
    from ftstudio.engine.memory.reference import resolved

    def plan(option_run: RunConfig) -> MemoryBreakdown:
        if resolved(option_run) == resolved(run):
            return est
        return plan_fn(option_run.replace(source=model), cfg)[0]
    return plan


def _largest_shard(model: str | None) -> int | None:
    """The largest weight file of a local model folder (what the loader holds on the host at once), else None."""
    from pathlib import Path

    if not model:
        return None
    folder = Path(model).expanduser()
    folder = folder.parent if folder.is_file() else folder
    sizes = [f.stat().st_size for pat in ("*.safetensors", "*.bin") for f in folder.glob(pat)] if folder.is_dir() else []
    return max(sizes) if sizes else None


def _host_ram() -> int | None:
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - the plan stands without the comparison
        return None


_MAX_SIZES = {"params": 1e14, "gpu_memory_gb": 1e5}   # 100 T parameters, 100 TB a card; counts at most 1e9


def _check_sizes(**sizes) -> None:
    """Sizes, counts and memory must be positive (and finite): a plan of nonsense would look like an answer."""
    for name, value in sizes.items():
        if value is None:
            continue
        flag = "--gpu-memory" if name == "gpu_memory_gb" else "--" + name.replace("_", "-")
        whole = name not in ("params", "gpu_memory_gb")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(flag, f"{value!r} is not a number")
        if not math.isfinite(value):
            raise ConfigError(flag, f"{value!r} is not a finite number")
        if value <= 0:
            raise ConfigError(flag, f"{value:g} must be positive")
        if value > _MAX_SIZES.get(name, 1e9):   # past any real model or card: the arithmetic would overflow
            raise ConfigError(flag, f"{value:g} is beyond any real {name.replace('_gb', '').replace('_', ' ')} "
                                    f"(at most {_MAX_SIZES.get(name, 1e9):g})")
        if whole and not float(value).is_integer():
            raise ConfigError(flag, f"{value!r} is not a whole number")


def _check_positions(cfg: dict, seq_len: int | None, source: str, cap: bool = False) -> int:
    """The sequence length to plan: refused beyond the model's positions (cut to them with ``cap``); None is 2048
    or the context, if shorter."""
    from ftstudio.engine.models.inspect import config_facts

    ctx = config_facts(cfg)["context_length"] if cfg else None
    if seq_len is None:
        return min(2048, ctx) if ctx else 2048
    if ctx and seq_len > ctx and cap:
        return ctx
    if ctx and seq_len > ctx:
        raise ConfigError("--seq-len", f"{seq_len} is beyond {source}'s {ctx} positions (its context length in "
                                       f"config.json); plan with --seq-len {ctx} or less")
    return seq_len


def _min_gpus(shape: ModelShape, run: RunConfig, capacity: int, margin: float = 0.05) -> int | None:
    for g in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        if estimate(shape, run, g).total <= capacity * (1 - margin):
            return g
    return None


def format_report(report: dict) -> str:
    """Human-readable plan: the breakdown beside the textbook figure, what fits, what would help."""
    gb = lambda x: f"{x / 1e9:,.1f} GB"  # noqa: E731
    b = report["breakdown"]
    n = report["params"]   # a small model in millions: "0.00 B" said nothing
    count = f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    lines = [f"{report['model']} ({report['model_type']}, {count} params"
             f"{'' if report.get('params_exact') else ', from config'}); batch {report['batch_size']} × "
             f"{report['seq_len']} tokens, {report['precision']}, {report['optimizer']}, loss {report['loss']}"
             f"{', checkpointing' if report['activation_checkpointing'] else ''}"
             f"{', ' + str(report['gpus']) + ' GPUs' if report['gpus'] > 1 else ''}", ""]
    for key in ("weights", "gradients", "optimizer", "anchor", "activations", "other"):
        if key == "anchor" and not b.get(key):
            continue
        lines.append(f"  {key:<12}{gb(b[key]):>12}")
    lines.append(f"  {'peak':<12}{gb(report['peak_bytes']):>12}   per GPU (largest at the {report['peak_phase']})")
    if report.get("margin"):
        lines.append(f"  {'with margin':<12}{gb(report['peak_bytes'] * (1 + report['margin'])):>12}   "
                     f"+{report['margin']:.0%} ({report.get('method', 'closed form')}); closed form "
                     f"{gb(report.get('closed_form_bytes') or report['peak_bytes'])}")
    lines.append(f"  {'textbook':<12}{gb(report['textbook_bytes']):>12}   the seed's 16N + s·b·d·L·12")
    if report.get("train_method", "sft") != "sft":
        lines.append(f"  {report['train_method']}: two rows per pair (chosen and rejected) in each forward")
    ref = report.get("reference") or {}
    for option in ("precompute", "model") if ref else ():
        r = ref[option]
        lines.append(f"  reference {option:<10} peak {gb(r['total']):>10}   +{gb(r['reference'])} during training: "
                     f"{r['when']}{'  (this run)' if ref['chosen'] == option else ''}")
    if report.get("textbook_omits"):
        lines.append(f"  {'':<12}{'':>12}   {report['textbook_omits']}")
    if report.get("host_bytes"):
        ram = report.get("host_ram_bytes")
        lines.append(f"  {'host RAM':<12}{gb(report['host_bytes']):>12}   for the whole run (weights load onto the "
                     f"GPU one shard at a time)" + (f"; this machine has {gb(ram)}: NOT enough" if ram and
                                                    ram < report["host_bytes"] else ""))
    for line in [*report.get("choices", []), *report.get("notes", [])]:
        lines.append(f"  · {line}")
    if report.get("gpu_memory_bytes"):
        cap = gb(report["gpu_memory_bytes"])
        lines += ["", f"On a {cap} GPU: {'fits' if report['fits'] else 'does NOT fit'}; largest batch "
                      f"{report['max_batch_size']} at {report['seq_len']} tokens, longest sequence "
                      f"{report['max_seq_len']}"
                      + (" (the model's context)" if report['max_seq_len'] == report.get("context") else "")
                      + f" at batch {report['batch_size']}"
                      + (f"; needs {report['min_gpus']} GPU(s)" if report.get("min_gpus") else "")]
        if report["suggestions"]:
            lines.append("Single changes that save the most:")
            lines += [f"  - {s}" for s in report["suggestions"]]
    if report.get("seed_table"):
        lines += ["", "The seed's table (b = 1, s = 2048, k = 12):",
                  f"  {'model':<10} {'params':>7} {'W+G+Opt':>10} {'activ.':>8} {'total':>9}  min GPUs"]
        for r in report["seed_table"]:
            lines.append(f"  {r['model']:<10} {r['params'] / 1e9:>6.0f}B {r['weights_grads_optimizer_gb']:>7.1f} GB"
                         f" {r['activations_gb']:>5.1f} GB {r['total_gb']:>6.1f} GB  {r['min_gpus']}")
    return "\n".join(lines)


def textbook_omits(b: MemoryBreakdown) -> str:
    """What the seed's 16N + s·b·d·L·12 leaves out, with this plan's sizes of it."""
    gb = lambda x: f"{x / 1e9:.1f} GB"  # noqa: E731
    return (f"(leaves out the loss's logits, b·s·vocab in fp32 with their gradient: {gb(b.parts.get('loss', 0))}; "
            f"autocast's bf16 weight copies: {gb(b.parts.get('weight_copies', 0))}; attention and norm "
            "temporaries; the allocator's rounding and the CUDA context)")


__all__ = ["estimate_report", "format_report", "seed_table", "synthetic_shape"]

