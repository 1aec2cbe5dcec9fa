"""The trainer's side of catastrophic forgetting: the general-text set (retention evaluation, data mixing,
EWC's Fisher), the θ0 anchor (L2-SP, EWC, drift monitor), and their events.

The formulas live in anchors.py and general.py; this module decides when each runs and what it reports.
"""
from __future__ import annotations

from contextlib import nullcontext

from ftstudio.core.config import RunConfig
from ftstudio.core.events import LogLine, RetentionMetrics
from ftstudio.engine.forgetting.anchors import build_regularizer
from ftstudio.engine.forgetting.general import collate_causal, general_examples, retention_loss
from ftstudio.engine.forgetting.interpolate import save_new_params


class Forgetting:
    """Built once at setup, on the model already on its device and before a resume loads a checkpoint
    (θ0 must be the pre-trained weights)."""

    def __init__(self, cfg: RunConfig, model, tokenizer, task: str, prepared, device: str, autocast_dtype, report,
                 run_dir=None, new_params=(), should_stop=None):
        """``new_params``: the tensors the base model lacks: their initialisation is kept in ``run_dir`` (init/),
        the θ0 that ``ftstudio interpolate`` mixes a new classifier head from. ``eval.benchmarks``: scored on
        θ0 at the first evaluation and on the trained weights at :meth:`summary` (benchmarks.RunBenchmarks), which
        ask ``should_stop()`` (the run's Stop) between the harness's batches."""
        self.cfg, self.report, self.task, self.device = cfg, report, task, device
        if run_dir is not None and new_params:
            save_new_params(run_dir, model, new_params)
        self.benchmarks = None
        if cfg.eval.benchmarks.strip() and run_dir is not None:
            import torch.distributed as dist

            if task != "causal-lm" or (dist.is_available() and dist.is_initialized()):
                report(LogLine("eval.benchmarks score a language model on one device; they are off for this run "
                               "(score it afterwards: ftstudio eval RUN --tasks ...)", "warning"))
            else:
                from ftstudio.engine.benchmarks import RunBenchmarks
                self.benchmarks = RunBenchmarks(cfg, run_dir, tokenizer, device, autocast_dtype, report,
                                                should_stop=should_stop)
        self.autocast_dtype = autocast_dtype
        r = cfg.regularize
        causal = task == "causal-lm"
        wants_general = causal and (r.retention_eval or r.mix_fraction > 0 or r.ewc > 0)
        if not causal and (r.retention_eval or r.mix_fraction > 0):
            report(LogLine("retention evaluation and data mixing need a language model; they are off for a "
                           "classifier", "warning"))
        general = general_examples(tokenizer, cfg.data.seq_len, r.retention_data) if wants_general else []
        # Never measure retention on text the run may train on: every 5th general example is held out for the
        # retention evaluation (whether or not mixing is on, so runs compare on the same text); the rest is mixed.
        if r.retention_eval and len(general) >= 5:
            held_out = [ex for i, ex in enumerate(general) if i % 5 == 0]
            self.general = [ex for i, ex in enumerate(general) if i % 5 != 0]
        else:
            held_out = self.general = general
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._collate_general = lambda rows: collate_causal(rows, pad)
        self.retention_batches = ([self._collate_general(held_out[i:i + cfg.train.batch_size])
                                   for i in range(0, len(held_out), cfg.train.batch_size)]
                                  if causal and r.retention_eval else [])
        fisher_batches = None
        if r.ewc > 0:
            if causal:  # from the general text the retention evaluation never scores (its held-out fifth)
                fisher_batches = [self._collate_general(self.general[i:i + 1])
                                  for i in range(min(len(self.general), r.ewc_batches))]
            else:  # a classifier has no general text: its Fisher comes from the task data (documented)
                fisher_batches = [prepared.collate(prepared.train[i:i + 1])
                                  for i in range(min(len(prepared.train), r.ewc_batches))]
            fisher_batches = fisher_batches[: r.ewc_batches]
        self.regularizer = build_regularizer(model, cfg, fisher_batches) if (
            r.l2sp or r.ewc or r.drift_every) else None
        if self.regularizer is not None and self.regularizer.active:
            report(LogLine(f"θ0 kept on {r.l2sp_anchor} for L2-SP/EWC: {self.regularizer.nbytes / 1e6:.1f} MB"))
        self.first_retention: RetentionMetrics | None = None
        self.last_retention: RetentionMetrics | None = None

    @property
    def penalty_active(self) -> bool:
        return self.regularizer is not None and self.regularizer.active

    def _autocast(self):
        import torch
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=self.autocast_dtype)

    def evaluate(self, model, step: int) -> None:
        """Retention loss on general text and drift from θ0, at the start and at every evaluation."""
        self._last_step = step
        if step == 0 and self.benchmarks is not None:
            self.benchmarks.score(model, "base", 0)
        if self.retention_batches:
            with self._autocast():
                loss, ppl = retention_loss(model, self.retention_batches)
            event = RetentionMetrics(step=step, loss=loss, perplexity=ppl)
            self.first_retention = self.first_retention or event
            self.last_retention = event
            self.report(event)
        if self.regularizer is not None:
            self.report(self.regularizer.drift_metrics(model, step))

    def maybe_drift(self, model, step: int) -> None:
        every = self.cfg.regularize.drift_every
        if self.regularizer is not None and every and step % every == 0:
            self.report(self.regularizer.drift_metrics(model, step))

    def summary(self, first_eval: dict | None, last_eval: dict | None, model=None) -> None:
        """One line a user can act on: what the task gained against what general text lost (and the benchmarks
        of the trained ``model`` against θ0's, when eval.benchmarks names some)."""
        if self.benchmarks is not None and model is not None:
            self.benchmarks.score(model, "fine_tuned", getattr(self, "_last_step", 0))
        if not (self.first_retention and self.last_retention):
            return
        a, b = self.first_retention, self.last_retention
        task = ""
        if first_eval and last_eval:
            task = f"task loss {first_eval['loss']:.3f} → {last_eval['loss']:.3f}; "
        self.report(LogLine(f"Forgetting: {task}general-text loss {a.loss:.3f} → {b.loss:.3f} "
                            f"(perplexity {a.perplexity:.1f} → {b.perplexity:.1f}, "
                            f"{100 * (b.perplexity / a.perplexity - 1):+.1f} %)"))
