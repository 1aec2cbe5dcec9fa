"""Which library runs an 8/4-bit optimizer here: the one decision the trainer (train/optim.py builds the optimizer
from it) and the planner (the state layout it plans) both take, so the plan is of the optimizer the run will make.

``adamw8bit``: FT Studio's own (train/fp8_state_adamw.py: FP8 moments with a scale per 256 values, stochastic
rounding, a Triton kernel on FP8-capable GPUs and torch elsewhere, the CPU included; it needs only torch with
float8 dtypes) first, then torchao's AdamW8bit (it rounds bf16 weights stochastically), then bitsandbytes';
``adamw4bit``: torchao only. Their states differ where a tensor is not quantised: ours quantises every tensor,
torchao keeps plain states in the weight's dtype for a tensor under 4096 values or not a multiple of its block
(256 values for 8-bit, 128 for 4-bit), bitsandbytes keeps fp32 states under 4096 values (plan.optimizer_bytes). A library that is installed but fails to
import (a C++ extension built for another torch, a missing symbol) counts as absent, with its error kept for the
message: the run stops at setup with that message rather than train something else; nothing falls back to full
AdamW states silently.

No torch at import. ``probe=False`` asks only whether the package is installed (no import: the closed form in the
GUI); ``probe=True`` imports the optimizer class, once per process.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

# optimizer → the libraries that provide it, in the order the trainer prefers them: (library, module, class)
PROVIDERS = {
    "adamw8bit": (("ftstudio", "ftstudio.engine.train.fp8_state_adamw", "Fp8StateAdamW"),
                  ("torchao", "torchao.optim", "AdamW8bit"), ("bitsandbytes", "bitsandbytes.optim", "AdamW8bit")),
    "adamw4bit": (("torchao", "torchao.optim", "AdamW4bit"),),
}
INSTALL = {"adamw8bit": "pip install torchao (or bitsandbytes)", "adamw4bit": "pip install torchao"}


@dataclass(frozen=True)
class LowBit:
    optimizer: str
    library: str | None          # "torchao" | "bitsandbytes" | None (none usable here)
    tried: tuple[str, ...] = ()  # one line per library passed over, and why

    @property
    def usable(self) -> bool:
        return self.library is not None

    def problem(self) -> str:
        """Why the optimizer cannot run here, for the ConfigError of optim.optimizer and the plan's note."""
        return (f"{self.optimizer} needs " + " or ".join(lib for lib, _, _ in PROVIDERS[self.optimizer])
                + f" ({'; '.join(self.tried)}): {INSTALL[self.optimizer]}")


_CACHE: dict[tuple[str, bool], LowBit] = {}


def lowbit_library(optimizer: str, *, probe: bool = True) -> LowBit:
    """The library that will run ``optimizer`` (``adamw8bit`` / ``adamw4bit``) in this process; see the module
    docstring. Any other optimizer needs none (library None, usable False is never asked of it)."""
    key = (optimizer, probe)
    if key in _CACHE:
        return _CACHE[key]
    tried: list[str] = []
    chosen = None
    for library, module, cls in PROVIDERS.get(optimizer, ()):
        why = _why_not(library, module, cls, probe)
        if why is None:
            chosen = library
            break
        tried.append(f"{library} {why}")
    out = _CACHE[key] = LowBit(optimizer, chosen, tuple(tried))
    return out


def optimizer_class(optimizer: str):
    """The class the trainer builds for ``optimizer`` (after :func:`lowbit_library` said which library)."""
    found = lowbit_library(optimizer, probe=True)
    for library, module, cls in PROVIDERS[optimizer]:
        if library == found.library:
            return library, getattr(importlib.import_module(module), cls)
    return None, None


def _why_not(library: str, module: str, cls: str, probe: bool) -> str | None:
    try:
        if importlib.util.find_spec(library) is None:
            return "is not installed"
    except (ImportError, ValueError):
        return "is not installed"
    if not probe:
        return None
    try:
        getattr(importlib.import_module(module), cls)
    except Exception as e:  # noqa: BLE001 - broken builds raise anything (OSError, RuntimeError, AttributeError)
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return f"is installed but failed to import ({type(e).__name__}: {first})"
    return None


def forget() -> None:
    """Decide again on the next call (tests; a library installed while the GUI runs)."""
    _CACHE.clear()
