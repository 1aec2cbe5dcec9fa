"""What DPO's reference costs, per option (``train.dpo_reference``), for ``ftstudio estimate`` and the GUI:

* ``precompute``: θ0 scores every pair once before training (a forward pass without gradients, no more memory
  than the run's evaluation phase); during training nothing: the log-probabilities ride with the batch.
* ``model``: a frozen copy of θ0 on the device for the whole run, one more copy of the weights in their dtype
  (4 bytes a parameter under bf16-mixed's fp32 master weights, 2 under pure bf16).

Both options train on two rows per pair (chosen and rejected in one forward): the traced plan runs the trainer's
own pair step (train/dpo_plan.py), the closed form (:func:`plan.estimate`) counts two full-length rows. No torch.
"""
from __future__ import annotations

from ftstudio.engine.memory.plan import estimate


def reference_costs(shape, run, gpus: int = 1, device: str | None = None, plan=None) -> dict:
    """{option: {"peak": bytes per GPU, "reference": bytes the reference holds during training, "when": words,
    "method": how the peak was planned}} for a DPO run, and which option ``auto`` takes; {} for another method.
    ``plan(run)``: the MemoryBreakdown of a run (the traced step of train/dpo_plan.py), else the closed form."""
    if run.train.method != "dpo":
        return {}
    out = {}
    for option in ("precompute", "model"):
        chosen = run.replace(dpo_reference=option)
        est = plan(chosen) if plan is not None else estimate(shape, chosen, gpus, device)
        held = est.parts.get("reference", 0)
        out[option] = {"peak": est.peak_allocated, "total": est.total, "reference": held, "method": est.method,
                       "when": ("a forward pass over every pair before training (no more memory than evaluation); "
                                "nothing during training" if option == "precompute" else
                                "a frozen copy of θ0 beside the weights for the whole run")}
    out["chosen"] = resolved(run)
    return out


def resolved(run) -> str:
    """``dpo_reference`` with auto resolved (train/dpo.py's ``reference_choice``, which imports torch)."""
    return "precompute" if run.train.dpo_reference == "auto" else run.train.dpo_reference
