"""The memory plan of a preference run (``train.method: dpo | simpo``): the step the tracer runs is the trainer's
own pair step (train/dpo.py's ``PreferenceObjective.loss``), so the plan counts what that step allocates rather
than a formula's guess:

* B pairs are 2B rows in one forward, chosen and rejected right-padded to the longer of the batch's answers (the
  ``PairCollator``): the tracer's batch of B rows of the longest pair's length is turned into those 2B rows here;
* the answers' log-probabilities through the path the run takes: the whole logits with one fp32 row at a time
  for the log-softmax (``sequence_logps``), or the chunked head (``memory.loss: chunked``);
* the reference: ``precompute`` reads θ0's values from the batch (nothing during training; their forward over
  every pair before training is a no-grad pass, the plan's evaluation phase); ``model`` runs the frozen copy's
  forward without gradients first, while nothing of the policy is saved. That pass runs here on the traced model
  with its parameters marked frozen (the copy is θ0 itself, so its work is the same); the copy's own weights are
  the plan's ``reference`` part (plan.py), as they must not be counted twice;
* the data's rows: the longest pair (the longer of its two answers, over the training and the held-out pairs,
  which the reference and the evaluation also score) sets the length, not ``seq_len``; the first step, which the
  trainer gives the longest pairs, runs before the optimizer state exists, so the state is planned beside the
  longest batch of the later steps (:func:`plan_pairs`).
It imports train/dpo.py, hence torch: plan_run imports it only for a preference run's plan.
"""
from __future__ import annotations

from ftstudio.engine.train.dpo import PreferenceObjective, answer_logps, longest_pair, pair_length, reference_choice


def pair_loss(run):
    """The tracer's loss function (``StepChoices.loss_fn``) for ``run``'s preference step; its ``compiled`` is the
    same function, because a compiled run compiles the blocks while the preference loss runs eagerly."""
    reference = reference_choice(run.train) if run.train.method == "dpo" else None
    train_cfg = run.train

    def loss(model, batch: dict, *, chunked: bool):
        import torch

        keys = ("input_ids", "attention_mask", "labels")
        pairs = {k: torch.cat([batch[k], batch[k]]) for k in keys if k in batch}    # B pairs: 2B rows
        mask = pairs.get("attention_mask")
        pairs["attention_mask"] = mask = torch.ones_like(pairs["input_ids"]) if mask is None else mask.clone()
        if mask.shape[1] > 1:
            mask[-1, -1] = 0      # the collator always masks: a pair's two answers differ in length
        if reference == "model":
            pairs["ref_logps"] = frozen_logps(model, pairs, chunked)
        elif reference == "precompute":
            pairs["ref_logps"] = torch.zeros(pairs["input_ids"].shape[0])          # read from the batch
        return PreferenceObjective(train_cfg, chunked=chunked).loss(model, pairs)

    loss.compiled = loss
    return loss


FIRST_STEP = "first step (no optimizer state yet)"
TRACED_PHASES = ("optimizer step", "evaluation")      # beside forward/backward (memory/traced.py's _compose)


def plan_pairs(plan_at, run, longest: int, later: int | None):
    """The plan of a preference run: ``plan_at(seq_len=, loss_fn=)`` (traced.plan with the run's fields) at the
    longest pair, and, when the steps after the first hold shorter batches (``later``, the trainer's length-grouped
    order puts the longest first), again at ``later``: the first step runs before the optimizer state exists (torch
    makes it at the first ``step()``), so its peak holds no state, while the later, shorter steps hold it. On an
    H100 that was the difference between +20 % and within 3 % (tests/benchmarks/results/dpo_plan_gpu_h100.json)."""
    first = plan_at(seq_len=longest, loss_fn=pair_loss(run))
    if (later is None or later >= longest or first.method != "traced" or run.memory.optimizer_in_backward
            or "phase:forward/backward" not in first.parts):
        return first
    rest = plan_at(seq_len=later, loss_fn=pair_loss(run))
    if rest.method != "traced":
        return first
    return first_step_apart(first, rest, longest, later)


def first_step_apart(first, rest, longest: int, later: int):
    """``first`` (planned at the longest batch) with its forward/backward split: the first step at ``longest``
    without the optimizer state, the later steps at ``later`` (``rest``'s) with it."""
    import dataclasses

    phases = {FIRST_STEP: first.parts["phase:forward/backward"] - first.optimizer,   # traced.py's phases (parts
              "forward/backward": rest.parts["phase:forward/backward"],              # also hold the closed form's)
              **{k: first.parts[f"phase:{k}"] for k in TRACED_PHASES if f"phase:{k}" in first.parts}}
    phase = max(phases, key=phases.get)
    peak = phases[phase]
    parts = dict(first.parts)
    parts.update({f"phase:{k}": v for k, v in phases.items()}, later_seq_len=later)
    held = first.weights + first.gradients + first.optimizer + first.anchor
    note = (f"the first step holds the longest pairs ({longest} tokens) before the optimizer state exists; the "
            f"later steps' longest batch is {later} tokens, planned with the state beside it")
    return dataclasses.replace(first, peak_allocated=peak, peak_reserved=first.peak_reserved - first.peak_allocated
                               + peak, peak_phase=phase, activations=max(0, peak - held), parts=parts,
                               notes=[*first.notes, note])


def frozen_logps(model, batch: dict, chunked: bool):
    """The frozen copy's pass as ``PreferenceObjective.pair_stats`` runs it (no gradients, parameters that require
    none, so autocast keeps no cast of them for a backward), on ``model`` standing in for its copy."""
    import torch

    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        with torch.no_grad():
            return answer_logps(model, inputs, batch["labels"], chunked)[0]
    finally:
        for p in trainable:
            p.requires_grad_(True)


__all__ = ["pair_length", "longest_pair", "pair_loss", "plan_pairs", "first_step_apart", "frozen_logps", "FIRST_STEP"]
