"""Named presets: sets of RunConfig leaf values the user picks by intent (GUI menu, ``--preset NAME``).

A preset is a dict of leaf name → value (the same names as the CLI flags), applied with
:func:`apply_preset` on top of a config; flags given after it still override it. Leaves a preset does not
name keep their values, so a preset never forgets the user's model, data or run length.

Pure Python: importing this module imports neither torch nor Qt.
"""
from __future__ import annotations

from .config import LEAF_TO_SECTION, RunConfig
from .errors import ConfigError

# The memory/speed leaves every preset sets, so switching presets never leaves one preset's trick behind.
_PLAIN = {"activation_checkpointing": False, "offload_activations": False, "loss": "full", "compile": False,
          "optimizer_in_backward": False, "fp8": "off"}

PRESETS: dict[str, dict] = {
    "Safe defaults (the seed)": {
        "lr": 2e-5, "schedule": "cosine", "warmup_ratio": 0.05, "epochs": 2.0, "optimizer": "adamw",
        "weight_decay": 0.01, "grad_clip": 1.0, "precision": "auto", "nonfinite": "skip", **_PLAIN,
    },
    "Reference (the seed's 16N recipe)": {
        "precision": "bf16-mixed", "optimizer": "adamw", **_PLAIN, "fast_defaults": False,
    },
    "Fastest": {
        # Pure bf16 (half the weight bytes moved, no autocast casts; AdamW with stochastic rounding keeps
        # small updates on average). Compile (each block, and the head + loss as one graph: faster than Liger's
        # chunks when the logits fit) and packing are the fast defaults' choice, by the same repay rule as a run
        # without flags (train/compiling.py): a short run never pays for a compile it cannot repay. Where the run
        # does not fit the card (or --gpu-memory), train/fastest.py picks the fastest options that do.
        # FP8 linear layers (torchao) where the model is large enough for them to pay (train/fp8.py).
        **_PLAIN, "precision": "bf16", "optimizer": "adamw", "bf16_rounding": "stochastic", "loss": "full",
        "fast_defaults": True, "fp8": "auto",
    },
    "Largest model that fits": {
        # bf16 weights, 8-bit AdamW states with stochastic rounding, the step inside backward (gradients of
        # one tensor at a time), checkpointed blocks with their inputs in CPU memory, the chunked loss.
        "precision": "bf16", "optimizer": "adamw8bit", "optimizer_in_backward": True, "grad_accum": 1,
        "activation_checkpointing": True, "offload_activations": True, "loss": "chunked", "compile": True,
        "fp8": "off",
    },
    "Guard against forgetting": {
        # The seed's remedies together, at strengths the SmolLM2 table in README supports: a low LR, one
        # epoch, 5 % general text in every batch, an L2-SP pull toward θ0, and the forgetting curve measured.
        "lr": 1e-5, "epochs": 1.0, "schedule": "cosine", "warmup_ratio": 0.05, "mix_fraction": 0.05,
        "l2sp": 0.1, "retention_eval": True, "drift_every": 10,
    },
    "ULMFiT discriminative rates": {
        # ULMFiT's ξ = 2.6 per layer from the top (head at lr). On deep models (30 blocks span 2.6^31) with
        # tied embeddings the head barely trains; use ξ near 1.1 there.
        "layer_lr_decay": 2.6, "lr": 5e-5, "schedule": "linear", "warmup_ratio": 0.1, "drift_every": 10,
    },
}

DESCRIPTIONS: dict[str, str] = {
    "Guard against forgetting": "low LR (1e-5), 1 epoch, 5 % general text mixed into each batch, L2-SP 0.1, "
                                "retention (general-text perplexity) and per-layer drift measured.",
    "ULMFiT discriminative rates": "layer l from the top trains at lr·2.6^-l (embeddings slowest), linear "
                                   "decay with 10 % warmup; per-layer drift measured.",
    "Safe defaults (the seed)": "lr 2e-5, cosine schedule with 5 % warmup, 2 epochs, AdamW, clipping at 1.0: "
                                "a full fine-tune that rarely goes wrong.",
    "Reference (the seed's 16N recipe)": "fp32 master weights and AdamW states with bf16 autocast (16 bytes per "
                                         "parameter), nothing recomputed or compiled: the numbers to compare "
                                         "against.",
    "Fastest": "pure bf16 with stochastic-rounding AdamW; torch.compile per block and of the head + loss, and "
               "packing, wherever the run is long enough to repay them (--compile / --packing force them); the "
               "fastest options that fit the GPU (or --gpu-memory). Needs a CUDA GPU with bf16; about 8 bytes "
               "per parameter plus the logits.",
    "Largest model that fits": "bf16 weights + 8-bit AdamW states (FP8 moments, stochastic rounding), the optimizer step "
                               "fused into backward, checkpointed blocks offloaded to CPU memory: about 4 bytes "
                               "per parameter (3 with --optimizer adamw4bit: Qwen2.5-32B fits one 141 GB H200). "
                               "Slower; gradient clipping becomes per tensor.",
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict:
    """The preset's leaf values; a unique case-insensitive prefix of a name works too ("fastest", "largest")."""
    if name in PRESETS:
        return dict(PRESETS[name])
    hits = [n for n in PRESETS if n.lower().startswith(name.strip().lower())] if name.strip() else []
    if len(hits) == 1:
        return dict(PRESETS[hits[0]])
    raise ConfigError("preset", f"{name!r} is not a preset; choose one of: {', '.join(PRESETS)}")


def apply_preset(config: RunConfig, name: str) -> RunConfig:
    """``config`` with the preset's leaves set (validated; an unknown leaf would be a bug here, not user error)."""
    leaves = get_preset(name)
    for leaf in leaves:
        assert leaf in LEAF_TO_SECTION, f"preset {name!r} names unknown field {leaf!r}"
    return config.replace(**leaves)


def matching_preset(config: RunConfig) -> str | None:
    """The first preset whose every leaf equals the config's (for the GUI to show which one is active)."""
    for name, leaves in PRESETS.items():
        if all(config.get(leaf) == value for leaf, value in leaves.items()):
            return name
    return None
