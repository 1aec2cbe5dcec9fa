"""The train room: one device's fine-tune, read top to bottom in ``trainer.py``.

- ``trainer.py``: ``Trainer``, the loop (setup → steps → evaluation / checkpoints → export); it reports
  events and obeys a ``Control``; ``distributed/fsdp.py`` subclasses it for several GPUs;
- ``schedule.py``: how many steps, which rows each micro-batch reads, and the learning rate of each step;
- ``numerics.py``: device and precision; ``optim.py``: parameter groups and optimizers;
- ``loss.py``: every causal-LM loss path (the model's own, chunked slices, Liger's fused kernel, the compiled
  head); ``attention.py``: the attention kernel, beside ``cudnn_attention.py``; ``compiling.py``: compile per
  block and when it repays; ``offload.py``: checkpointed inputs in CPU memory; ``in_backward.py``: the step
  inside backward; ``mfu.py``: MFU against the card's own peak; ``fast_path.py`` / ``fastest.py``: what a run
  turns on by itself, and the fastest options for a memory budget (``speed.py`` only re-exports);
- ``evaluate.py``: validation metrics; ``checkpoint.py``: crash-safe checkpoints and exact resume;
- ``early_stop.py``: the best evaluation, its weights (export_best) and early stopping (patience);
- ``lr_find.py``: the LR range test, a ``Trainer`` subclass; ``preflight.py``: the memory plan checked before
  a run nobody watches start (the range test, sweep trials; ``engine/sweep.py`` drives Optuna above this room).

This face imports no torch (the GUI draws the LR schedule from it before any training): ``optim``,
``loss``, ``offload`` and ``in_backward`` import torch and are imported as modules where they are needed.
"""
from ftstudio.engine.train.numerics import Numerics, pick_device, pick_numerics
from ftstudio.engine.train.schedule import Schedule, lr_at, lr_curve, plan_schedule, warmup_steps_for
from ftstudio.engine.train.trainer import Trainer

__all__ = ["Trainer", "Schedule", "plan_schedule", "lr_at", "lr_curve", "warmup_steps_for", "Numerics",
           "pick_device", "pick_numerics"]
