"""Evaluation on the validation split: loss and perplexity for causal LMs; loss, accuracy and macro-F1 for
classifiers, beside the majority-class baseline, per-class precision/recall and a warning when the predictions
collapse onto one class (figures.py). Also the predictions a confusion matrix needs (the GUI's compare tab)."""
from __future__ import annotations

import math
from contextlib import nullcontext


def _batches(examples, batch_size, max_batches):
    if max_batches is None and examples and "label" not in examples[0]:
        # A causal LM's figure is a sum over tokens (each batch's token mean × its tokens), which no batching
        # changes beyond float rounding: batches of similar lengths pad far less (SmolLM2's instruction rows:
        # a batch of 16 random rows pads to its longest). Capped evaluations (eval_batches) keep the split's
        # order, so that they score the same rows; classifiers keep it for their predictions' order.
        examples = sorted(examples, key=lambda ex: len(ex["input_ids"]))
    n = 0
    for start in range(0, len(examples), batch_size):
        if max_batches is not None and n >= max_batches:
            return
        n += 1
        yield examples[start:start + batch_size]


def predict(model, prepared, *, device: str, autocast_dtype=None, batch_size: int = 32, max_batches=None,
            loss_fn=None, shard=None):
    """(loss summed over examples or tokens, count, predictions, targets) over the validation split.

    ``loss_fn(model, batch)``: the causal-LM loss on the training path (chunked, fused or compiled), so that
    evaluation needs no more memory than training planned; None uses the model's own loss.
    ``shard=(rank, world, group)``: an FSDP rank scores batches rank, rank + world, ... and the sums (and a
    classifier's predictions) are combined over the ranks on ``group``, so every rank returns the whole split's
    result. Every rank runs the same number of forwards (FSDP gathers weights collectively): a rank with no
    batch left runs one more on a batch it then ignores."""
    import torch

    batches = list(_batches(prepared.val, batch_size, max_batches))
    rank, world, group = shard or (0, 1, None)
    rounds = -(-len(batches) // world)
    mine = [(i, batches[i] if i < len(batches) else None) for i in range(rank, rounds * world, world)]
    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    loss_sum, count, scored = 0.0, 0, []
    try:
        with torch.no_grad(), autocast:
            for index, chunk in mine:
                batch = {k: v.to(device) for k, v in prepared.collate(chunk or batches[-1]).items()}
                labels = batch["labels"]
                if labels.dim() == 1:  # classification: one label per example
                    out = model(**batch)
                    n, loss = labels.numel(), out.loss
                    if chunk is not None:
                        scored.append((index, out.logits.argmax(-1).tolist(), labels.tolist()))
                else:  # causal LM: the mean over predicted tokens (labels shifted by one)
                    n = int((labels[:, 1:] != -100).sum())
                    if n == 0 and shard is None:
                        continue
                    loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
                if chunk is None or n == 0:
                    continue   # the padding forward of a rank with no batch left
                loss_sum += float(loss) * n
                count += n
    finally:
        model.train(was_training)
    if shard is not None and world > 1:
        import torch.distributed as dist

        sums = torch.tensor([loss_sum, float(count)], dtype=torch.float64)
        dist.all_reduce(sums, group=group)
        loss_sum, count = float(sums[0]), int(sums[1])
        gathered = [None] * world
        dist.all_gather_object(gathered, scored, group=group)
        scored = [item for part in gathered for item in part]
    preds = [p for _, ps, _ in sorted(scored) for p in ps]
    targets = [t for _, _, ts in sorted(scored) for t in ts]
    return loss_sum, count, preds, targets


def macro_f1(preds: list[int], targets: list[int]) -> float:
    classes = sorted(set(targets) | set(preds))
    f1s = []
    for c in classes:
        tp = sum(1 for p, t in zip(preds, targets) if p == c and t == c)
        fp = sum(1 for p, t in zip(preds, targets) if p == c and t != c)
        fn = sum(1 for p, t in zip(preds, targets) if p != c and t == c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def confusion_matrix(preds: list[int], targets: list[int], n_classes: int) -> list[list[int]]:
    """m[true][predicted]."""
    m = [[0] * n_classes for _ in range(n_classes)]
    for p, t in zip(preds, targets):
        m[t][p] += 1
    return m


def evaluate(model, prepared, *, device: str, task: str, autocast_dtype=None, batch_size: int = 32,
             max_batches=None, loss_fn=None, shard=None, objective=None) -> dict:
    if objective is not None:  # preference pairs (train.method dpo / simpo): loss, accuracy, rewards
        from ftstudio.engine.train.dpo import evaluate_pairs
        return evaluate_pairs(objective, model, prepared, device=device, autocast_dtype=autocast_dtype,
                              batch_size=batch_size, max_batches=max_batches)
    loss_sum, count, preds, targets = predict(model, prepared, device=device, autocast_dtype=autocast_dtype,
                                              batch_size=batch_size, max_batches=max_batches, loss_fn=loss_fn,
                                              shard=shard)
    loss = loss_sum / max(1, count)
    if task == "classification":
        from ftstudio.engine.train.figures import class_figures

        acc = sum(p == t for p, t in zip(preds, targets)) / max(1, len(targets))
        figures = class_figures(preds, targets, getattr(prepared, "label_names", None))
        return {"loss": loss, "accuracy": acc, "macro_f1": macro_f1(preds, targets), "perplexity": None,
                "majority_baseline": figures["majority_baseline"], "majority_class": figures["majority_class"],
                "per_class": figures["per_class"], "collapsed": figures["collapsed"]}
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": None, "macro_f1": None}
