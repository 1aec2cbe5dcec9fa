"""The harness's view of a model FT Studio loaded: lm-evaluation-harness's ``HFLM`` around it, made to obey Stop.

The harness runs a task as a list of requests scored in batches, and gives no hook between them. ``HFLM``'s two
model calls (``_model_call`` for log-likelihood batches, ``_model_generate`` for generation) are where every
batch passes, so the subclass asks ``should_stop()`` there and raises :class:`BenchmarkStopped`: a task stops
within one batch of the request, nothing is scored half and nothing is recorded for the stopped model.
"""
from __future__ import annotations

from typing import Callable

from ftstudio.core.errors import FTStudioError


class BenchmarkStopped(FTStudioError):
    """Stop was asked while the harness was scoring; the scores of that model are not kept."""


def harness_lm(model, tokenizer, *, batch_size, device: str, should_stop: Callable[[], bool] | None = None):
    """An ``HFLM`` wrapping ``model``; with ``should_stop``, each batch first asks it (a Stop between batches)."""
    from lm_eval.models.huggingface import HFLM

    if should_stop is None:
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)

    class StoppableHFLM(HFLM):
        batches = 0   # model calls made: the batches scored (a test reads how far a stopped task got)

        def _check(self):
            if should_stop():
                raise BenchmarkStopped(f"benchmarks stopped after {self.batches} batch(es): no scores kept for "
                                       "this model")
            self.batches += 1

        def _model_call(self, *args, **kwargs):
            self._check()
            return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args, **kwargs):
            self._check()
            return super()._model_generate(*args, **kwargs)

    return StoppableHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
