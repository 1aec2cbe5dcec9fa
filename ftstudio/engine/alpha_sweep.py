"""The α sweep: θ(α) for a grid of α scored on the run's own task metric (eval.metric on its validation split,
through the trainer's evaluation) and on retention (the loss on the held-out general text the run measured forgetting with),
optionally on lm-evaluation-harness benchmarks; then an α chosen by a stated rule.

One model is loaded (from final/) and set to each θ(α) in place, tensor by tensor (interpolate.apply_alpha), so
the sweep holds one model, not one per α, and writes nothing but its record.

The rule: the largest α whose retention loss stays within ``budget`` nats of the base model's. The default
budget is half of what the fine-tune added (retention(1) − retention(0)) / 2: the α that keeps the most task gain
while taking back at least half of the forgetting. A run that did not raise its retention loss keeps α = 1.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from ftstudio.core.errors import ConfigError


def check_alphas(alphas: list[float]) -> list[float]:
    from ftstudio.engine.forgetting.interpolate import check_alpha

    out = sorted({check_alpha(a) for a in alphas})
    if len(out) < 2:
        raise ConfigError("--alphas", "give at least two values, e.g. 0,0.25,0.5,0.75,1")
    return out


def _task_of(final: Path) -> str:
    arch = (json.loads((final / "config.json").read_text(encoding="utf-8")).get("architectures") or [""])[0]
    return "classification" if "SequenceClassification" in arch else "causal-lm"


def _retention_batches(cfg, tokenizer, batch_size: int) -> list:
    """The held-out fifth of the general text, as the run's retention evaluation scored it (monitor.py)."""
    from ftstudio.engine.forgetting.general import collate_causal, general_examples

    general = general_examples(tokenizer, cfg.data.seq_len, cfg.regularize.retention_data)
    held_out = [ex for i, ex in enumerate(general) if i % 5 == 0] if len(general) >= 5 else general
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return [collate_causal(held_out[i:i + batch_size], pad) for i in range(0, len(held_out), batch_size)]


def choose_alpha(points: list[dict], budget: float | None) -> tuple[float | None, str]:
    """(α, the rule as a sentence) from points with "alpha" and "retention"."""
    by_alpha = {p["alpha"]: p for p in points}
    if 0.0 not in by_alpha or 1.0 not in by_alpha or any(p.get("retention") is None for p in points):
        return None, "no α chosen: the rule needs retention at α = 0 and α = 1 (a causal LM run)"
    r0, r1 = by_alpha[0.0]["retention"], by_alpha[1.0]["retention"]
    if r1 <= r0:
        return 1.0, "α = 1: the fine-tune did not raise the retention loss, so there is no forgetting to take back"
    limit_text = f"{budget:g} nats" if budget is not None else f"half the fine-tune's increase ({(r1 - r0) / 2:.4f})"
    allowed = r0 + (budget if budget is not None else (r1 - r0) / 2)
    within = [p["alpha"] for p in points if p["retention"] <= allowed]
    alpha = max(within) if within else 0.0
    return alpha, (f"α = {alpha:g}: the largest α whose retention loss stays within {limit_text} of the base "
                   f"model's ({r0:.4f})")


def _fractions(points: list[dict]) -> None:
    """Each point's share of the task gain kept and of the retention loss taken back (0 at α = 0 or 1)."""
    by_alpha = {p["alpha"]: p for p in points}
    if 0.0 in by_alpha and 1.0 in by_alpha:
        t0, t1 = by_alpha[0.0].get("task"), by_alpha[1.0].get("task")
        r0, r1 = by_alpha[0.0].get("retention"), by_alpha[1.0].get("retention")
        for p in points:
            if None not in (t0, t1, p.get("task")) and t1 != t0:
                p["task_gain_kept"] = (p["task"] - t0) / (t1 - t0) + 0.0  # no "-0 %"
            if None not in (r0, r1, p.get("retention")) and r1 > r0:
                p["retention_recovered"] = (r1 - p["retention"]) / (r1 - r0) + 0.0


class AlphaModel:
    """The run's fine-tuned model loaded once (from final/, on ``device`` in the run's training dtype), set to any
    θ(α) in place: the sweep's model, and the handle a window's slider previews α with (``set_alpha``, then
    ``model`` / ``tokenizer`` for generation). ``alpha`` is the α its weights hold now."""

    def __init__(self, run_dir: str | Path, device: str = "auto"):
        from ftstudio.core.config import ModelConfig, RunConfig
        from ftstudio.engine.benchmarks import pick_device
        from ftstudio.engine.forgetting.interpolate import plan_interpolation
        from ftstudio.engine.models import load_model, quiet_transformers
        from ftstudio.engine.models.load import load_target
        from ftstudio.engine.train.numerics import pick_numerics

        self.plan = plan_interpolation(run_dir)
        self.cfg = RunConfig.load_run(self.plan.run_dir / "config.yaml")
        self.task = _task_of(self.plan.final_dir)
        self.device = pick_device(device)
        self.numerics = pick_numerics(self.cfg.hardware.precision, self.device)
        quiet_transformers()
        loaded = load_model(ModelConfig(source=str(self.plan.final_dir), task=self.task), task=self.task,
                            **load_target(self.device, self.numerics.param_dtype))
        self.model, self.tokenizer = loaded.model.to(self.device), loaded.tokenizer
        self.model.eval()
        self.alpha = 1.0

    def set_alpha(self, alpha: float) -> None:
        from ftstudio.engine.forgetting.interpolate import apply_alpha, check_alpha

        alpha = check_alpha(alpha)
        if alpha != self.alpha:
            apply_alpha(self.model, self.plan, alpha)
            self.alpha = alpha

    def autocast(self):
        import torch

        dtype = self.numerics.autocast_dtype
        return (torch.autocast(device_type=self.device.split(":")[0], dtype=dtype) if dtype is not None
                else nullcontext())


def sweep_alphas(run_dir: str | Path, alphas: list[float], *, budget: float | None = None, bench=None,
                 device: str = "auto", report: Callable[[str], None] | None = None, save: bool = True,
                 should_stop: Callable[[], bool] | None = None, handle: AlphaModel | None = None) -> dict:
    """Score θ(α) for each α (task metric, retention, and ``bench`` (BenchSettings) when given); choose α.
    Returns the record (also written atomically to RUN/interpolation/sweep-<time>.json when ``save``).
    ``should_stop()`` is asked before each α and between benchmark batches (a window's Stop: the points
    scored so far are kept); ``handle``
    reuses an :class:`AlphaModel` already loaded (it is left at the last α scored)."""
    import torch

    from ftstudio.engine import data as data_mod
    from ftstudio.engine.forgetting.general import retention_loss
    from ftstudio.engine.train.evaluate import evaluate

    say = report or (lambda _m: None)
    alphas = check_alphas(alphas)
    if budget is not None and budget < 0:
        raise ConfigError("--retention-budget", f"{budget:g} must be 0 or more (nats above the base model's loss)")
    bench_ctx = None
    if bench is not None:
        from ftstudio.engine.benchmarks import resolve_tasks
        bench.check()
        bench_ctx = resolve_tasks(bench)
    h = handle or AlphaModel(run_dir, device)
    plan, cfg, task, device, numerics = h.plan, h.cfg, h.task, h.device, h.numerics
    model, tok, final = h.model, h.tokenizer, plan.final_dir
    from ftstudio.engine.models import head_labels
    prepared = data_mod.prepare_data(cfg.data, tok, task=task, seed=cfg.train.seed,   # the ids final/ was trained on
                                     label_order=head_labels(model.config.to_dict()))
    retention = _retention_batches(cfg, tok, cfg.train.batch_size) if task == "causal-lm" else []
    key = cfg.eval.metric if task == "classification" else "loss"   # the run's own validation metric
    metric = f"eval {key.replace('_', '-')}"
    if not prepared.val:
        say("warning: the run has no validation split (val_fraction 0): the task metric is not measured")
    points = []
    for alpha in alphas:
        if should_stop is not None and should_stop():
            say("stopped: the points scored so far are kept")
            break
        t0 = time.perf_counter()
        h.set_alpha(alpha)
        point: dict = {"alpha": alpha}
        if prepared.val:
            result = evaluate(model, prepared, device=device, task=task, autocast_dtype=numerics.autocast_dtype,
                              batch_size=cfg.train.batch_size, max_batches=cfg.eval.eval_batches)
            point["eval_loss"] = result["loss"]
            point["task"] = result[key]
        if retention:
            with h.autocast():
                point["retention"], point["retention_perplexity"] = retention_loss(model, retention)
        if bench_ctx is not None:
            from ftstudio.engine.benchmarks import BenchmarkStopped, evaluate_model
            try:
                with torch.no_grad(), h.autocast():
                    scores = evaluate_model(model, tok, bench, bench_ctx, device=device, label=f"α={alpha:g}",
                                            should_stop=should_stop)["scores"]
            except BenchmarkStopped:
                say(f"stopped during α={alpha:g}'s benchmarks: that point is dropped, the ones before are kept")
                break
            point["benchmarks"] = {f"{t}/{m}": v["value"] for t, ms in scores.items() for m, v in ms.items()}
        point["seconds"] = round(time.perf_counter() - t0, 2)
        say("α={:g}: {}".format(alpha, ", ".join(f"{k} {v:.4f}" for k, v in point.items()
                                                   if isinstance(v, float) and k not in ("alpha", "seconds"))))
        points.append(point)
    _fractions(points)
    chosen, rule = choose_alpha(points, budget)
    record = {"run": str(plan.run_dir), "theta0": plan.base_source, "theta_star": str(final), "task": task,
              "task_metric": metric, "device": device, "precision": numerics.precision, "points": points,
              "retention_budget": budget, "chosen_alpha": chosen, "rule": rule, "notes": plan.notes,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if chosen is not None:
        p = next(p for p in points if p["alpha"] == chosen)
        record["chosen"] = {k: p.get(k) for k in ("task", "retention", "task_gain_kept", "retention_recovered")}
    if save:
        record["saved_to"] = str(save_sweep(record))
    return record


def save_sweep(record: dict) -> Path:
    """RUN/interpolation/sweep-<time>.json (atomic), and the curve as sweep-<time>.png when matplotlib is there."""
    from ftstudio.core.runs import atomic_write_text

    folder = Path(record["run"]) / "interpolation"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    stem, n = stamp, 2
    while (folder / f"{stem}.json").exists():  # two sweeps within a second (a window's Stop, then Sweep again)
        stem, n = f"{stamp}-{n}", n + 1
    path = folder / f"{stem}.json"
    try:
        from ftstudio.engine.plots import save_interpolation_plot
        record["plot"] = save_interpolation_plot(folder / f"{stem}.png", record)
    except ImportError:
        record["plot"] = None  # matplotlib is optional ('ftstudio[plot]'); the table and the record stand
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def latest_sweep(run_dir: str | Path) -> dict | None:
    """The run's newest saved sweep record (RUN/interpolation/sweep-*.json), or None."""
    from ftstudio.core.runs import newest_record
    return newest_record(Path(run_dir) / "interpolation", "sweep-*.json")


CHOICE_FILE = Path("interpolation") / "choice.json"


def save_choice(run_dir: str | Path, alpha: float, **settings) -> Path:
    """RUN/interpolation/choice.json (atomic): the α a user chose (a window's Forgetting-budget slider) and the
    settings it was chosen under (the sweep's grid and file, the retention budget, where it was exported)."""
    from ftstudio.core.runs import atomic_write_text
    from ftstudio.engine.forgetting.interpolate import check_alpha

    path = Path(run_dir) / CHOICE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = dict(settings, alpha=check_alpha(alpha), saved=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path


def load_choice(run_dir: str | Path) -> dict | None:
    """The saved choice (see :func:`save_choice`), or None when there is none or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / CHOICE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
