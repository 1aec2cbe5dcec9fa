"""What DPO's reference costs, per option (``train.dpo_reference``), for ``ftstudio estimate`` and the GUI:

* ``precompute``: θ0 scores every pair once before training (a forward pass without gradients, no more memory
  than the run's evaluation phase); during training nothing: the log-probabilities ride with the batch.
* ``model``: a frozen copy of θ0 on the device for the whole run, one more copy of the weights in their dtype
  (4 bytes a parameter under bf16-mixed's fp32 master weights, 2 under pure bf16).

Both options train on two rows per pair (chosen and rejected in one forward), which :func:`plan.estimate` counts
for any preference run. No torch.
"""
from __future__ import annotations

from ftstudio.engine.memory.plan import estimate


def reference_costs(shape, run, gpus: int = 1, device: str | None = None) -> dict:
    """{option: {"peak": bytes per GPU, "reference": bytes the reference holds during training, "when": words}}
    for a DPO run, and which option ``auto`` takes; {} for another method."""
    if run.train.method != "dpo":
        return {}
    out = {}
    for option in ("precompute", "model"):
        est = estimate(shape, run.replace(dpo_reference=option), gpus, device)
        held = est.parts.get("reference", 0)
        out[option] = {"peak": est.peak_allocated, "total": est.total, "reference": held,
                       "when": ("a forward pass over every pair before training (no more memory than evaluation); "
                                "nothing during training" if option == "precompute" else
                                "a frozen copy of θ0 beside the weights for the whole run")}
    out["chosen"] = "precompute" if run.train.dpo_reference == "auto" else run.train.dpo_reference
    return out
