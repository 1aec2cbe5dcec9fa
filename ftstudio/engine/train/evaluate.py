"""Evaluation on the validation split: loss and perplexity for causal LMs; loss, accuracy and macro-F1 for
classifiers. Also the predictions a confusion matrix needs (the GUI's compare tab)."""
from __future__ import annotations

import math
from contextlib import nullcontext


def _batches(examples, batch_size, max_batches):
    n = 0
    for start in range(0, len(examples), batch_size):
        if max_batches is not None and n >= max_batches:
            return
        n += 1
        yield examples[start:start + batch_size]


def predict(model, prepared, *, device: str, autocast_dtype=None, batch_size: int = 32, max_batches=None,
            loss_fn=None):
    """(loss summed over examples or tokens, count, predictions, targets) over the validation split.

    ``loss_fn(model, batch)``: the causal-LM loss on the training path (chunked, fused or compiled), so that
    evaluation needs no more memory than training planned; None uses the model's own loss."""
    import torch

    was_training = model.training
    model.eval()
    autocast = (torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype)
                if autocast_dtype is not None else nullcontext())
    loss_sum, count, preds, targets = 0.0, 0, [], []
    try:
        with torch.no_grad(), autocast:
            for chunk in _batches(prepared.val, batch_size, max_batches):
                batch = {k: v.to(device) for k, v in prepared.collate(chunk).items()}
                labels = batch["labels"]
                if labels.dim() == 1:  # classification: one label per example
                    out = model(**batch)
                    n, loss = labels.numel(), out.loss
                    preds += out.logits.argmax(-1).tolist()
                    targets += labels.tolist()
                else:  # causal LM: the mean over predicted tokens (labels shifted by one)
                    n = int((labels[:, 1:] != -100).sum())
                    if n == 0:
                        continue
                    loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
                loss_sum += float(loss) * n
                count += n
    finally:
        model.train(was_training)
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
             max_batches=None, loss_fn=None) -> dict:
    loss_sum, count, preds, targets = predict(model, prepared, device=device, autocast_dtype=autocast_dtype,
                                              batch_size=batch_size, max_batches=max_batches, loss_fn=loss_fn)
    loss = loss_sum / max(1, count)
    if task == "classification":
        acc = sum(p == t for p, t in zip(preds, targets)) / max(1, len(targets))
        return {"loss": loss, "accuracy": acc, "macro_f1": macro_f1(preds, targets), "perplexity": None}
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": None, "macro_f1": None}
