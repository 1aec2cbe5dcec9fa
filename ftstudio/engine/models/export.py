"""The fine-tuned model as a folder that ``transformers`` loads as is (``save_pretrained``: safetensors weights,
config.json, the tokenizer), written by the single-device trainer and by rank 0 of an FSDP run alike."""
from __future__ import annotations

import json
from pathlib import Path


def save_final(model, tokenizer, final: Path, *, state_dict: dict | None = None,
               architecture: str | None = None) -> Path:
    """Write ``final/``. ``state_dict``: the full weights when the model's own are sharded (FSDP gathers them
    first); ``architecture``: the class name to record when the model's class was swapped (FSDP's wrapper)."""
    final = Path(final)
    model.save_pretrained(final, state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(final)
    if architecture:
        # fully_shard swaps the class for "FSDP<Name>"; the folder must name the real architecture.
        cfg_path = final / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["architectures"] = [architecture]
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return final
