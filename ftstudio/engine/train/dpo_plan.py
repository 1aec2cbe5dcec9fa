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
  which the reference and the evaluation also score) sets the length, not ``seq_len``.
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


__all__ = ["pair_length", "longest_pair", "pair_loss", "frozen_logps"]
