"""PNG plots for headless results (the LR range test, a sweep), drawn with matplotlib's Agg canvas.

matplotlib is an optional extra (``pip install 'ftstudio[plot]'``, also in ``[sweep]``): every function here
raises ImportError when it is missing and the caller says so in one line. No pyplot (no global state, no
backend choice that could pull in Qt): a ``Figure`` on a ``FigureCanvasAgg``.
"""
from __future__ import annotations

import math
from pathlib import Path


def _figure(width: float = 7.0, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_lr_find_plot(path: str | Path, result) -> str:
    """Smoothed (and raw) loss against LR on a log axis, the minimum and the suggestion marked."""
    fig = _figure()
    ax = fig.add_subplot()
    finite = [(lr, raw, s) for lr, raw, s in zip(result.lrs, result.losses, result.smoothed)
              if math.isfinite(raw) and math.isfinite(s)]
    if finite:
        lrs, raw, sm = zip(*finite)
        ax.plot(lrs, raw, color="#9ca3af", linewidth=0.8, label="loss of each step")
        ax.plot(lrs, sm, color="#2563eb", linewidth=2.0, label="smoothed loss")
        top = min(max(sm) * 1.15, max(raw))
        ax.set_ylim(min(raw) * 0.95, max(top, min(raw) * 1.05))
    ax.set_xscale("log")
    if result.min_loss_lr:
        ax.axvline(result.min_loss_lr, color="#dc2626", linestyle=":", label=f"minimum  {result.min_loss_lr:.1e}")
    if result.suggested_lr:
        ax.axvline(result.suggested_lr, color="#16a34a", linewidth=2,
                   label=f"suggested  {result.suggested_lr:.1e}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test: " + (f"suggested {result.suggested_lr:.1e}" if result.suggested_lr
                                      else "no suggestion") + f"\nrule: {result.rule}", fontsize=8)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.savefig(path)
    return str(path)


def save_sweep_plot(path: str | Path, trials: list[dict], metric: str = "loss") -> str:
    """Each trial's final eval metric against its LR (log axis); pruned trials as crosses at their last value."""
    fig = _figure()
    ax = fig.add_subplot()
    done = [t for t in trials if t.get("state") == "complete" and t.get("value") is not None]
    pruned = [t for t in trials if t.get("state") == "pruned" and t.get("value") is not None]
    if done:
        ax.scatter([t["lr"] for t in done], [t["value"] for t in done], s=50, color="#2563eb", label="complete",
                   zorder=3)
    if pruned:
        ax.scatter([t["lr"] for t in pruned], [t["value"] for t in pruned], s=50, marker="x", color="#dc2626",
                   label="pruned (last evaluation)", zorder=3)
    best = min(done, key=lambda t: t["value"] if metric == "loss" else -t["value"]) if done else None
    if best:
        ax.scatter([best["lr"]], [best["value"]], s=180, facecolors="none", edgecolors="#16a34a", linewidths=2,
                   label=f"best  lr {best['lr']:.1e}", zorder=4)
    for t in done + pruned:
        ax.annotate(str(t["number"]), (t["lr"], t["value"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"eval {metric}")
    ax.set_title(f"Sweep: eval {metric} against LR ({len(trials)} trials)", fontsize=11)
    ax.grid(True, which="both", alpha=0.25)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.savefig(path)
    return str(path)


def save_interpolation_plot(path: str | Path, record: dict) -> str:
    """The α sweep (engine/alpha_sweep.py): the task metric and the retention loss against α on one figure
    (two y axes), the chosen α marked."""
    fig = _figure()
    ax = fig.add_subplot()
    pts = record["points"]
    xs = [p["alpha"] for p in pts]
    handles = []
    if any(p.get("task") is not None for p in pts):
        handles += ax.plot(xs, [p.get("task", math.nan) for p in pts], "o-", color="#2563eb",
                           label=f"task {record['task_metric']} (validation split)")
    ax.set_xlabel("α   (0: base model θ0,  1: fine-tuned θ*)")
    ax.set_ylabel(f"task {record['task_metric']}", color="#2563eb")
    if any(p.get("retention") is not None for p in pts):
        ax2 = ax.twinx()
        handles += ax2.plot(xs, [p.get("retention", math.nan) for p in pts], "s-", color="#dc2626",
                            label="retention loss (general text)")
        ax2.set_ylabel("retention loss (general text)", color="#dc2626")
    if record.get("chosen_alpha") is not None:
        handles.append(ax.axvline(record["chosen_alpha"], color="#16a34a", linewidth=2, linestyle=":",
                                  label=f"chosen α = {record['chosen_alpha']:g}"))
    ax.set_title("θ(α) = (1−α)·θ0 + α·θ*: task against retention", fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)  # never over a curve
    fig.savefig(str(path))
    return str(path)
