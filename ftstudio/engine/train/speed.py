"""Where each speed and size option of the training step lives (this module only re-exports them, for imports
written before the rooms were split; new code imports from the room itself):

- train/loss.py: every causal-LM loss path — the model's own, the chunked slices, Liger's fused kernel, the
  compiled head + cross-entropy, and :func:`loss.training_loss` that picks among them;
- train/attention.py: the attention kernel a run uses (cuDNN, flex, SDPA), beside train/cudnn_attention.py;
- train/compiling.py: ``torch.compile`` per block and the rule for when compiling repays itself;
- train/offload.py: activation checkpointing's saved inputs in pinned CPU memory;
- train/in_backward.py: the optimizer step inside backward;
- train/mfu.py: training FLOPs and MFU against the card's own peak (a datasheet table by device name).
"""
from __future__ import annotations

from ftstudio.engine.train.attention import (FIXED_SHARE, _cudnn_first, _fixed_length, _flex_available,  # noqa: F401
                                             choose_attention)
from ftstudio.engine.train.compiling import compile_blocks  # noqa: F401
from ftstudio.engine.train.in_backward import OptimizerInBackward, check_in_backward  # noqa: F401
from ftstudio.engine.train.loss import (_head_cross_entropy, bypasses_forward, compiled_cross_entropy,  # noqa: F401
                                        fused_cross_entropy, liger_available, plain_head)
from ftstudio.engine.train.loss import training_loss as causal_lm_loss  # noqa: F401
from ftstudio.engine.train.mfu import mfu, step_flops  # noqa: F401
from ftstudio.engine.train.offload import checkpoint_kwargs, offload_context  # noqa: F401
