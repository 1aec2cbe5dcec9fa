"""transformers from several threads at once.

transformers' top-level module loads its classes lazily; two threads that load them for the first time together
(the window's warm-up importing transformers, the data check and the plan each loading a tokenizer) see a half-made
module, and ``from transformers import AutoTokenizer`` fails with "cannot import name 'AutoTokenizer'". The plan
then said "Data not read" and planned full rows, on the bundled demo at start-up. :func:`ready` loads the classes
the engine's threads use once, under one lock; every thread-reachable import of them calls it first.
"""
from __future__ import annotations

import threading

CLASSES = ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification",
           "PreTrainedModel", "PreTrainedTokenizerBase")
_LOCK = threading.Lock()
_READY = False


def ready():
    """transformers, with :data:`CLASSES` loaded (the first call in the process loads them; later ones return)."""
    global _READY
    if not _READY:
        with _LOCK:
            if not _READY:
                import transformers
                for name in CLASSES:
                    getattr(transformers, name)
                _READY = True
    import transformers
    return transformers
