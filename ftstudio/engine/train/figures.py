"""Figures a researcher can take at face value: the end-of-run train loss as a mean over the last steps (not
the last micro-batch), and for a classifier what its accuracy means beside the majority-class baseline, with
per-class precision and recall and a warning when its predictions collapse onto one class."""
from __future__ import annotations

import types
from collections import Counter, deque


def tail_steps(total_steps: int) -> int:
    """How many last steps the end-of-run train loss averages: a tenth of the run, at least 10 (or the whole run,
    if shorter), at most 100."""
    return max(1, min(total_steps, max(10, total_steps // 10), 100))


class LossTail:
    """The last steps' losses, kept as device tensors (no sync per step); :meth:`mean` syncs once, at the end."""

    def __init__(self, total_steps: int):
        self._losses: deque = deque(maxlen=tail_steps(total_steps))

    def append(self, step_loss) -> None:
        self._losses.append(step_loss.detach())

    def summary(self, fallback: float | None) -> dict:
        """RunFinished's ``train_loss`` and ``train_loss_steps``: this mean, or ``fallback`` (the last logged
        loss) with 0 steps when no step ran."""
        loss, n = self.mean(fallback)
        return {"train_loss": loss, "train_loss_steps": n}

    def mean(self, fallback: float | None = None) -> tuple[float | None, int]:
        """(mean loss of the kept steps, how many), or (``fallback``, 0) before any step."""
        if not self._losses:
            return fallback, 0
        import torch
        return float(torch.stack([x.float() for x in self._losses]).mean()), len(self._losses)


COLLAPSE_SHARE = 0.95   # predictions this concentrated on one class, with several classes present: collapsed


def class_figures(preds: list[int], targets: list[int], names: list[str] | None = None) -> dict:
    """Per-class precision/recall/F1/support, the majority-class baseline (the accuracy of always answering the most
    frequent true class) and ``collapsed``: a warning line when nearly every prediction (≥ 95 %) is one class
    while the targets hold several, else None."""
    n = len(targets)
    classes = sorted(set(targets) | set(preds))
    name = (lambda c: names[c] if names and 0 <= c < len(names) else str(c))
    truth, said = Counter(targets), Counter(preds)
    per_class = {}
    for c in classes:
        tp = sum(1 for p, t in zip(preds, targets) if p == c and t == c)
        per_class[name(c)] = {"precision": tp / said[c] if said[c] else None,
                              "recall": tp / truth[c] if truth[c] else None,
                              "f1": 2 * tp / (said[c] + truth[c]),  # 0 when the class is never got right
                              "support": truth[c], "predicted": said[c]}
    majority, majority_n = truth.most_common(1)[0] if truth else (None, 0)
    out = {"majority_class": name(majority) if majority is not None else None,
           "majority_baseline": majority_n / n if n else None, "per_class": per_class, "collapsed": None}
    if said and len(truth) > 1:
        top, top_n = said.most_common(1)[0]
        if top_n / len(preds) >= COLLAPSE_SHARE:
            acc = sum(p == t for p, t in zip(preds, targets)) / n
            out["collapsed"] = (f"predictions collapsed onto one class: {top_n / len(preds):.0%} of the {len(preds)} "
                                f"validation rows are predicted '{name(top)}'; accuracy {acc:.1%} beside the "
                                f"majority-class baseline {out['majority_baseline']:.1%} "
                                f"('{out['majority_class']}'): the classifier has not learned to tell the classes "
                                "apart. Train longer, try another learning rate, or balance the classes")
    return out


# -- after the first step: did every trainable parameter move, and how much of a bf16 update was rounded away ----
SAMPLE_PER_TENSOR = 4096      # elements looked at per tensor (a fixed, seeded sample: no copy of the weights)
LOST_WARN = 0.5               # pure bf16 without compensation: warn when more of the updates than this are lost
COMPENSATED = ("adamw",)      # our AdamW keeps small bf16 updates (stochastic rounding or Kahan: optim.py)


def _local(t):
    return t.to_local() if hasattr(t, "to_local") else t          # an FSDP shard: this rank's part


def check_first_step(optimizer, model, cfg, report, *, fresh: bool) -> None:
    """Wrap ``optimizer.step`` once (a fresh run; not with the step inside backward, where no step() updates):
    the first step samples each trainable tensor before and after the update and reports which tensors did not
    move (no gradient reached them, or every update was rounded away), and for bf16 weights the share of
    sampled elements whose gradient was non-zero but whose weight did not change: the updates lost to rounding.
    It warns, with the fix, where the optimizer does not compensate (adafactor, sgd)."""
    if not fresh or cfg.memory.optimizer_in_backward:
        return
    optimizer_name, real_step, done = cfg.optim.optimizer, optimizer.step, []
    rounding = cfg.optim.bf16_rounding

    def first_step(self, *args, **kwargs):
        if done:   # (not unwrapped: the LR scheduler wraps this step in its turn)
            return real_step(*args, **kwargs)
        done.append(True)
        before = _sample(model)
        out = real_step(*args, **kwargs)
        try:
            _report_first_step(before, model, optimizer_name, rounding, report)
        except Exception as e:  # noqa: BLE001 - a figure must never end a run
            from ftstudio.core.events import LogLine
            report(LogLine(f"first-step check skipped: {type(e).__name__}: {e}", "info"))
        return out
    optimizer.step = types.MethodType(first_step, optimizer)   # a bound method, as LR schedulers expect


def _sample(model) -> dict:
    import torch

    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        flat, grad = _local(p.detach()).reshape(-1), p.grad
        if flat.numel() == 0:
            continue
        g = torch.Generator(device="cpu").manual_seed(len(out))
        idx = torch.randint(0, flat.numel(), (min(SAMPLE_PER_TENSOR, flat.numel()),), generator=g)
        idx = idx.to(flat.device)
        grad_nz = None if grad is None else (_local(grad.detach()).reshape(-1)[idx] != 0)
        out[name] = (idx, flat[idx].clone(), grad_nz)
    return out


def _report_first_step(before: dict, model, optimizer_name: str, rounding: str, report) -> None:
    import torch

    from ftstudio.core.events import LogLine

    params = dict(model.named_parameters())
    still, no_grad, lost, with_grad, bf16 = [], [], 0, 0, False
    for name, (idx, old, grad_nz) in before.items():
        p = params[name]
        new = _local(p.detach()).reshape(-1)[idx]
        moved = new != old
        if grad_nz is None:
            no_grad.append(name)
        elif not bool(moved.any()):
            still.append(name)
        if grad_nz is not None and p.dtype == torch.bfloat16:
            bf16 = True
            lost += int((grad_nz & ~moved).sum())
            with_grad += int(grad_nz.sum())
    n = len(before)
    if not no_grad and not still:
        report(LogLine(f"After the first step all {n} trainable tensors moved"))
    if len(still) == n and n:
        report(LogLine("The first step changed no weight (a skipped step, or a learning rate of 0 at step 1)",
                       "warning"))
    else:
        for names, why in ((no_grad, "no gradient reached them (unused by the loss?)"),
                           (still, "their gradient was non-zero but no sampled weight changed (rounded away?)")):
            if names:
                shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                report(LogLine(f"After the first step {len(names)} of {n} trainable tensors did not move: "
                               f"{shown}: {why}", "warning"))
    if bf16 and with_grad:
        share = lost / with_grad
        line = (f"bf16 weights: {share:.1%} of the first step's sampled updates left the weight unchanged (its "
                "gradient was non-zero, the update below the weight's rounding step)")
        if optimizer_name in COMPENSATED:
            report(LogLine(line + ("; adamw's stochastic rounding keeps them on average" if rounding == "stochastic"
                                   else "; adamw's Kahan buffer carries them to later steps")))
        elif share > LOST_WARN:
            report(LogLine(line + f"; {optimizer_name} does not compensate: use --optimizer adamw (stochastic "
                           "rounding), or --precision bf16-mixed (fp32 master weights)", "warning"))
        else:
            report(LogLine(line))
