"""The forgetting room: catastrophic forgetting measured and held back while a fine-tune runs.

- ``anchors.py``: θ0, the pre-trained weights, and the pulls toward it (L2-SP, EWC with its Fisher
  diagonal), plus the drift of each layer group from θ0;
- ``general.py``: general text (the retention evaluation, data mixing, EWC's batches for a causal LM);
- ``monitor.py``: ``Forgetting``, the trainer's side: builds all of the above once and reports their events;
- ``interpolate.py``: after a run, θ(α) = (1−α)·θ0 + α·θ* written tensor by tensor (``ftstudio interpolate``);
  engine/alpha_sweep.py (above train and this room) scores θ(α) on the task metric and retention.
"""
from ftstudio.engine.forgetting.anchors import Regularizer, build_regularizer, estimate_fisher
from ftstudio.engine.forgetting.general import (collate_causal, general_batches, general_count, general_examples,
                                                general_text_path, load_general_texts, mix_examples,
                                                retention_loss)
from ftstudio.engine.forgetting.interpolate import save_new_params, write_interpolated
from ftstudio.engine.forgetting.monitor import Forgetting

__all__ = ["Regularizer", "build_regularizer", "estimate_fisher", "collate_causal", "general_batches",
           "general_count", "general_examples", "general_text_path", "load_general_texts", "mix_examples",
           "retention_loss", "Forgetting", "save_new_params", "write_interpolated"]
