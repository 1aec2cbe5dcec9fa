"""The models room: a model source ("demo", a local folder, an HF-cache id, a .gguf file, a hub id) → what it
is (no torch, no weights) → the model and tokenizer for full fine-tuning → the exported folder.

- ``describe.py``: ``describe_model`` / ``list_cached_models`` / the task rules, from the facts below;
- ``inspect.py``: config.json and safetensors headers; ``gguf.py``: GGUF metadata (``ParseOnce``: one
  parse of a GGUF per load); ``hub.py``: the HF cache
  and, when it answers quickly, the hub;
- ``tensors.py``: every parameter tensor an architecture creates, from its config (the memory plan's input);
- ``load.py``: loading for training (imports torch and transformers inside its functions);
- ``structure.py``: the block list and layer groups of a loaded model (imports torch: not re-exported here);
- ``export.py``: ``final/`` as ``save_pretrained`` writes it.
"""
from ftstudio.engine.models.describe import (CAUSAL_FORMATS, TASKS, LoadedModel, ModelInfo, check_task,
                                             demo_model_path, describe_model, list_cached_models, resolve_task)
from ftstudio.engine.models.gguf import ParseOnce
from ftstudio.engine.models.inspect import head_labels
from ftstudio.engine.models.load import load_model, load_tokenizer, missing_tokenizer, quiet_transformers
from ftstudio.engine.models.tensors import ModelShape, shape_from_config

__all__ = ["TASKS", "CAUSAL_FORMATS", "ModelInfo", "LoadedModel", "demo_model_path", "describe_model",
           "list_cached_models", "check_task", "resolve_task", "load_model", "load_tokenizer", "quiet_transformers",
           "ParseOnce", "ModelShape", "head_labels", "missing_tokenizer",
           "shape_from_config"]
