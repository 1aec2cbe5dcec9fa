"""Preference objectives (``train.method: dpo | simpo``): the loss of a pair batch, the reference log-probabilities,
the metrics a researcher watches, and evaluation on held-out pairs.

A batch holds B pairs as 2B rows, the chosen rows first (``data/preference.py``'s ``PairCollator``): one forward
scores both answers (TRL's ``concatenated_forward``). An answer's log-probability is the sum over its scored
tokens (labels not -100, shifted by one as Hugging Face models shift them) of log p(token | everything before).

DPO (Rafailov et al. 2023), sigmoid loss with label smoothing ε (conservative DPO), as TRL's ``DPOTrainer``:
    h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))
    loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h),  reward(y) = β·(log π(y) − log π_ref(y))
The reference π_ref is θ0, the weights the run starts from: its log-probabilities are computed once before training
and stored per row in the run folder (``dpo_reference: precompute``; a resumed run reads them back, so it continues
exactly), or by a frozen copy of θ0 on the device (``model``).
SimPO (Meng et al. 2024), reference-free, as TRL's ``CPOTrainer`` with ``loss_type="simpo"``: the answers'
log-probabilities averaged over their tokens, h = avg log π(y_w) − avg log π(y_l) − γ/β, the same sigmoid loss,
reward(y) = β·avg log π(y).
The loss of a step is the mean over its pairs (each micro-batch's mean weighted by its share of the step's pairs).
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ftstudio.core.config import check_method_format
from ftstudio.core.errors import ConfigError, DataError
from ftstudio.core.events import LogLine
from ftstudio.engine.memory import chunk_tokens
from ftstudio.engine.train.loss import logit_transform, transform_logits

REFERENCE_FILE = "reference_logps.json"
BEFORE_FILE = "preference_before.json"
# logps/accuracies: the share of pairs whose chosen answer the model itself finds likelier than the rejected one
# (summed log-probabilities; SimPO's length-averaged ones), the model's own preference beside the rewards'
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "logps/accuracies")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probabilities of each row's scored tokens, their count), both (rows,), in fp32.

    The log-softmax normaliser is taken one row at a time (TRL's ``selective_log_softmax`` does the same): no
    full log-softmax output is made beside the logits, but each row's fp32 copy is kept for the backward, about
    what the SFT loss keeps per logit (the plan counts it so); ``memory.loss: chunked`` avoids whole logits."""
    labels = labels[:, 1:]
    logits = logits[:, :-1]
    mask = labels != -100
    picked = logits.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1).float()
    norm = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    per_token = (picked - norm) * mask
    return per_token.sum(-1), mask.sum(-1)


def _slice_logps(hidden, weight, bias, targets, scale: float, cap):
    logits = transform_logits(F.linear(hidden, weight, bias).float(), scale, cap)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_sequence_logps(model, inputs: dict, labels: torch.Tensor, chunk: int | None = None):
    """:func:`sequence_logps` without the logits (``memory.loss: chunked``): the base model's hidden states, then
    the head and the log-softmax by slices of tokens under activation checkpointing, as the chunked SFT loss
    (train/loss.py) does, so that only one slice's fp32 logits exist at a time."""
    base = getattr(model, model.base_model_prefix, None) or model.model
    hidden = base(**inputs).last_hidden_state[:, :-1]
    head = model.get_output_embeddings()
    scale, cap = logit_transform(model)
    targets = labels[:, 1:]
    mask = targets != -100
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.masked_fill(~mask, 0).reshape(-1)
    step = chunk or chunk_tokens(head.weight.shape[0])
    per_token = torch.cat([checkpoint(_slice_logps, flat_h[i:i + step], head.weight, head.bias, flat_t[i:i + step],
                                      scale, cap, use_reentrant=False) for i in range(0, flat_h.shape[0], step)])
    return (per_token.view_as(targets) * mask).sum(-1), mask.sum(-1)


def answer_logps(model, inputs: dict, labels: torch.Tensor, chunked: bool = False):
    """(summed log-probabilities, scored tokens) of each row of a pair batch, through the full or chunked head."""
    if chunked:
        return chunked_sequence_logps(model, inputs, labels)
    return sequence_logps(model(**inputs).logits, labels)


def sigmoid_loss(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float, label_smoothing: float = 0.0):
    """(per-pair losses, chosen rewards, rejected rewards) of DPO's sigmoid loss from summed log-probabilities."""
    h = (chosen - rejected) - (ref_chosen - ref_rejected)
    return (sigmoid_loss(h, beta, label_smoothing), beta * (chosen - ref_chosen).detach(),
            beta * (rejected - ref_rejected).detach())


def simpo_loss(chosen_avg, rejected_avg, beta: float, gamma: float, label_smoothing: float = 0.0):
    """(per-pair losses, chosen rewards, rejected rewards) of SimPO from length-averaged log-probabilities."""
    h = (chosen_avg - rejected_avg) - gamma / beta
    return sigmoid_loss(h, beta, label_smoothing), beta * chosen_avg.detach(), beta * rejected_avg.detach()


class PreferenceObjective:
    """The loss the trainer calls instead of the next-token loss, and the running sums of its metrics."""

    def __init__(self, train_cfg, reference=None, chunked: bool = False):
        self.chunked = chunked     # memory.loss chunked: log-probabilities by slices, the logits never whole
        self.method, self.beta = train_cfg.method, float(train_cfg.dpo_beta)
        self.label_smoothing, self.gamma = float(train_cfg.dpo_label_smoothing), float(train_cfg.simpo_gamma)
        self.reference = reference   # the frozen copy of θ0 (dpo_reference: model), else None
        self._sums: torch.Tensor | None = None
        self._pairs = 0

    def pair_stats(self, model, batch: dict):
        """(per-pair losses, the per-pair metrics stacked (len(METRICS), B)) of one pair batch."""
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        ref = batch.get("ref_logps")
        if self.method == "dpo" and ref is None:
            if self.reference is None:
                raise RuntimeError("a DPO batch without reference log-probabilities and no reference model")
            # First, while no activation of the policy is saved: the frozen copy's forward then costs no more
            # than an evaluation forward (memory/reference.py plans it so).
            with torch.no_grad():
                ref = self.logps(self.reference, inputs, batch["labels"])[0]
        logps, counts = self.logps(model, inputs, batch["labels"])
        b = logps.shape[0] // 2
        if self.method == "simpo":
            avg = logps / counts.clamp(min=1)
            losses, rc, rr = simpo_loss(avg[:b], avg[b:], self.beta, self.gamma, self.label_smoothing)
            shown = avg
        else:
            losses, rc, rr = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], self.beta, self.label_smoothing)
            shown = logps
        shown = shown.detach()
        stats = torch.stack([rc, rr, rc - rr, (rc > rr).float(), shown[:b], shown[b:],
                             (shown[:b] > shown[b:]).float()])
        return losses, stats

    def logps(self, model, inputs: dict, labels: torch.Tensor):
        return answer_logps(model, inputs, labels, self.chunked)

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The mean loss over the batch's pairs; its metrics are summed on the device (no sync) for :meth:`take`."""
        losses, stats = self.pair_stats(model, batch)
        sums = stats.sum(-1)
        self._sums = sums if self._sums is None else self._sums + sums
        self._pairs += losses.shape[0]
        return losses.mean()

    def take(self) -> dict[str, float]:
        """The metrics' means over the pairs since the last call (one device sync: the trainer calls it when it
        logs)."""
        if self._sums is None or not self._pairs:
            return {}
        out = dict(zip(METRICS, (self._sums / self._pairs).tolist()))
        self._sums, self._pairs = None, 0
        return out


def evaluate_pairs(objective: PreferenceObjective, model, prepared, *, device: str, autocast_dtype=None,
                   batch_size: int = 16, max_batches: int | None = None) -> dict:
    """EvalMetrics' fields on the validation pairs: the loss, the preference accuracy (chosen reward above the
    rejected), and the reward and log-probability means under ``objective``."""
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    loss_sum, stat_sum, n = 0.0, None, 0
    try:
        with torch.no_grad(), autocast:
            for i, start in enumerate(range(0, len(prepared.val), batch_size)):
                if max_batches is not None and i >= max_batches:
                    break
                batch = {k: v.to(device) for k, v in prepared.collate(prepared.val[start:start + batch_size]).items()}
                losses, stats = objective.pair_stats(model, batch)
                loss_sum += float(losses.sum())
                stat_sum = stats.sum(-1) if stat_sum is None else stat_sum + stats.sum(-1)
                n += losses.shape[0]
    finally:
        model.train(was_training)
    metrics = dict(zip(METRICS, (stat_sum / max(1, n)).tolist())) if stat_sum is not None else {}
    return {"loss": loss_sum / max(1, n), "accuracy": metrics.get("rewards/accuracies"), "perplexity": None,
            "macro_f1": None, "objective": metrics}


def evaluate_before(trainer, model, prepared, device: str, numerics) -> dict | None:
    """The held-out figures before the first step (the trainer calls it at step 0), reported as the evaluation of
    step 0 and kept in the run folder, so a resumed run's summary still has them: the "before" of "preference
    accuracy rises". Under DPO the policy is the reference at step 0, so its rewards are 0 up to rounding and their
    accuracy says nothing; ``logps/accuracies`` there is θ0's own preference (the share of held-out pairs whose
    chosen answer θ0 finds likelier). None for an SFT run or a run without held-out pairs."""
    objective = getattr(trainer, "_objective", None)
    if objective is None or not prepared.val:
        return None
    path = Path(trainer.run_dir) / BEFORE_FILE if trainer.run_dir else None
    if trainer.step > 0:
        return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else None
    from ftstudio.core.events import EvalMetrics
    cfg = trainer.cfg
    result = evaluate_pairs(objective, model, prepared, device=device, autocast_dtype=numerics.autocast_dtype,
                            batch_size=cfg.train.batch_size, max_batches=cfg.eval.eval_batches)
    trainer.report(EvalMetrics(step=0, **result))
    m = result["objective"]
    before = {"loss": result["loss"], "accuracy": result["accuracy"], "rewards/margins": m.get("rewards/margins"),
              "logps/accuracies": m.get("logps/accuracies")}
    trainer.report(LogLine(f"Before training (step 0, {len(prepared.val)} held-out pairs): θ0 prefers the chosen "
                           f"answer of {before['logps/accuracies']:.1%} of them by log-probability; loss "
                           f"{before['loss']:.4f}, reward margin {before['rewards/margins']:.4f}"
                           + (" (policy = reference: the rewards are 0 up to rounding)"
                              if cfg.train.method == "dpo" else "")))
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(before), encoding="utf-8")
        os.replace(tmp, path)
    return before


def precompute_reference(model, prepared, *, device: str, autocast_dtype=None, batch_size: int = 16,
                         path: Path | None = None, report=None, chunked: bool = False) -> str:
    """Put θ0's log-probabilities of both answers on every pair (``ex["ref"]``), stored in ``path`` once: a later
    call (a resumed run) reads them back instead of recomputing them. Returns what it did, in words."""
    stored = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.exists() else None
    splits = {"train": prepared.train, "val": prepared.val}
    if stored is not None:
        for name, rows in splits.items():
            have = stored.get(name, {})
            missing = [ex["row"] for ex in rows if str(ex["row"]) not in have]
            if missing:
                raise DataError(str(path), missing[0], None, f"the stored reference log-probabilities have no "
                                f"{name} row {missing[0]}: the data changed since the run started")
            for ex in rows:
                *ref, digest = have[str(ex["row"])]
                if digest != _digest(ex):
                    raise DataError(str(path), ex["row"], None, f"{name} row {ex['row']} is not the pair the stored "
                                    "reference log-probabilities were computed for: the data or the tokenizer "
                                    "changed since the run started; start a new run")
                ex["ref"] = ref
        return f"Reference log-probabilities read from {path}"
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    total = sum(len(rows) for rows in splits.values())
    done = 0
    try:
        with torch.no_grad(), autocast:
            for rows in splits.values():
                # Similar lengths batched together: far less padding computed (the values do not depend on it).
                order = sorted(range(len(rows)),
                               key=lambda i: max(len(rows[i]["input_ids"]), len(rows[i]["rejected_input_ids"])))
                for start in range(0, len(order), batch_size):
                    chunk = [rows[i] for i in order[start:start + batch_size]]
                    batch = {k: v.to(device) for k, v in prepared.collate(chunk).items() if k != "ref_logps"}
                    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
                    logps = answer_logps(model, inputs, batch["labels"], chunked)[0].tolist()
                    for j, ex in enumerate(chunk):
                        ex["ref"] = [logps[j], logps[len(chunk) + j]]
                    done += len(chunk)
                    if report is not None and (start // batch_size) % 50 == 49:
                        report(LogLine(f"Reference log-probabilities: {done}/{total} pairs"))
    finally:
        model.train(was_training)
    if path is not None:
        data = {name: {str(ex["row"]): [*ex["ref"], _digest(ex)] for ex in rows} for name, rows in splits.items()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)   # a crash leaves the old file or none, never half of one
    return f"Reference log-probabilities of θ0 computed for {total} pairs" + (f" and stored in {path}" if path else "")


def _digest(ex: dict) -> str:
    """What a stored value belongs to: the pair's token ids and scored tokens."""
    import hashlib
    key = json.dumps([ex["input_ids"], ex["labels"], ex["rejected_input_ids"], ex["rejected_labels"]])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def pair_length(ex: dict) -> int:
    """Tokens of a pair's padded rows: the longer of its chosen and rejected answers."""
    return max(len(ex["input_ids"]), len(ex.get("rejected_input_ids") or ()))


def longest_pair(prepared, seq_len: int) -> int:
    """The longest row any batch of the run holds (training, held-out and reference passes): what the memory plan
    traces (train/dpo_plan.py)."""
    lengths = [pair_length(ex) for ex in (*prepared.train, *prepared.val)]
    return min(seq_len, max(lengths)) if lengths else seq_len


def later_longest(cfg, prepared) -> int:
    """The longest micro-batch (its pairs' padded length) of the steps after the first, in the trainer's own order
    (train/schedule.py; length-grouped, the step with the longest row comes first): the first step runs before the
    optimizer state exists, so the plan puts the state beside this length, not the longest (train/dpo_plan.py).
    A run of more than two epochs meets the longest row again: then that."""
    from ftstudio.engine.train.schedule import plan_schedule, row_stats

    rows = prepared.train
    if not rows:
        return 0
    sched = plan_schedule(cfg, len(rows), 0, *row_stats(rows, [], cfg))
    ga, per_epoch = cfg.train.grad_accum, sched.batches_per_epoch
    total = sched.total_steps * ga
    if total > 2 * per_epoch:
        return min(cfg.data.seq_len, max(pair_length(ex) for ex in rows))
    longest = max((pair_length(rows[i]) for mb in range(ga, total) for i in sched.batch_indices(mb)), default=0)
    return min(cfg.data.seq_len, longest)


def reference_choice(train_cfg) -> str:
    """``dpo_reference`` resolved: auto is precompute (it never needs more memory, and scores each pair once
    where the frozen copy scores it once per epoch)."""
    return "precompute" if train_cfg.dpo_reference == "auto" else train_cfg.dpo_reference


def objective_for(trainer, cfg, model, prepared, device: str, numerics):
    """The trainer's hook, called once the model is placed and before a resume loads its weights (so the reference
    is θ0): None for sft, else the preference objective with its reference ready, whose loss then replaces the
    trainer's next-token loss (``trainer._forward_loss``)."""
    objective = _objective(cfg, model, prepared, device, numerics, trainer.run_dir, trainer.report)
    if objective is not None:
        trainer._forward_loss = objective.loss
        trainer._pairs_rows = (longest_pair(prepared, cfg.data.seq_len), later_longest(cfg, prepared))  # its plan
    return objective


def _objective(cfg, model, prepared, device: str, numerics, run_dir, report):
    method = cfg.train.method
    check_method_format(method, prepared.format)
    if method == "sft":
        return None
    chunked = cfg.memory.loss == "chunked"
    if method == "simpo":
        report(LogLine(f"SimPO: reference-free, β {cfg.train.dpo_beta:g}, γ {cfg.train.simpo_gamma:g}"))
        return PreferenceObjective(cfg.train, chunked=chunked)
    choice = reference_choice(cfg.train)
    if choice == "model":
        import copy
        reference = copy.deepcopy(model).eval().requires_grad_(False)
        report(LogLine(f"DPO (β {cfg.train.dpo_beta:g}): reference = a frozen copy of θ0 on {device}"))
        return PreferenceObjective(cfg.train, reference, chunked=chunked)
    said = precompute_reference(model, prepared, device=device, autocast_dtype=numerics.autocast_dtype,
                                batch_size=cfg.train.batch_size, path=Path(run_dir) / REFERENCE_FILE, report=report,
                                chunked=chunked)
    report(LogLine(f"DPO (β {cfg.train.dpo_beta:g}): {said}; no reference model during training"))
    return PreferenceObjective(cfg.train, chunked=chunked)
