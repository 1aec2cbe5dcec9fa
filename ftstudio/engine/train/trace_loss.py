"""The trainer's causal-LM loss as the memory tracer runs it (plan_run.py and the budget chooser's traced plan,
fast_path.traced_planner): eager, compiled (inductor's partition of the head + loss), and the trainer's checkpoint
kind. Its own room so that the planners reach it without importing each other."""
from __future__ import annotations


def trainer_loss(model, batch: dict, *, chunked: bool):
    """The trainer's causal-LM loss for the tracer (train/loss.py); ``trainer_loss.compiled`` is its compiled
    variant (train/speed.py's head + cross-entropy as one graph), partitioned as inductor would (memory.tracer.aot)."""
    from ftstudio.engine.train.loss import causal_lm_loss
    return causal_lm_loss(model, batch, chunked=chunked)


def _compiled_loss(model, batch: dict, *, chunked: bool):
    import functools

    import torch.nn.functional as F

    from ftstudio.engine.memory.tracer import aot
    from ftstudio.engine.train.loss import causal_lm_loss, logit_transform
    from ftstudio.engine.train.loss import head_cross_entropy as _head_cross_entropy

    if chunked:                                        # the chunked slices, as the trainer runs them without Liger
        return causal_lm_loss(model, batch, chunked=True)
    scale, cap = logit_transform(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    base = getattr(model, model.base_model_prefix, None) or model.model
    hidden = base(**inputs).last_hidden_state
    head = model.get_output_embeddings()
    targets = F.pad(batch["labels"], (0, 1), value=-100)[:, 1:].reshape(-1)
    bias = getattr(head, "bias", None)
    if bias is None:
        fn = aot(lambda h, w, t: _head_cross_entropy(h, w, None, t, scale, cap))
        return fn(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets)
    fn = aot(functools.partial(_head_cross_entropy, scale=scale, cap=cap))
    return fn(hidden.reshape(-1, hidden.shape[-1]), head.weight, bias, targets)


def _checkpoint_kwargs(offload: bool) -> dict:
    from ftstudio.engine.train.offload import checkpoint_kwargs
    return checkpoint_kwargs(offload)


trainer_loss.compiled = _compiled_loss
trainer_loss.checkpoint_kwargs = _checkpoint_kwargs     # the trainer's checkpoint kind (reentrant with offload)
