"""Figures a researcher can take at face value: the end-of-run train loss as a mean over the last steps (not
the last micro-batch), and for a classifier what its accuracy means beside the majority-class baseline, with
per-class precision and recall and a warning when its predictions collapse onto one class."""
from __future__ import annotations

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

    def mean(self, fallback: float | None = None) -> tuple[float | None, int]:
        """(mean loss of the kept steps, how many), or (``fallback``, 0) before any step."""
        if not self._losses:
            return fallback, 0
        import torch
        return float(torch.stack([x.float() for x in self._losses]).mean()), len(self._losses)


COLLAPSE_SHARE = 0.95   # predictions this concentrated on one class, with several classes present: collapsed


def class_figures(preds: list[int], targets: list[int], names: list[str] | None = None) -> dict:
    """Per-class precision/recall/support, the majority-class baseline (the accuracy of always answering the most
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
                              "recall": tp / truth[c] if truth[c] else None, "support": truth[c],
                              "predicted": said[c]}
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
