"""The training loop: setup → for each step (forward, loss + regulariser, backward, clip, optimizer step,
schedule) → evaluation / checkpoint at their intervals → export.

It reports event dataclasses to ``reporter`` and polls ``control`` between steps; it never knows who
listens (the CLI's console, the GUI's worker, a test). User errors (bad data, bad config, a model that
cannot load, out of memory) end the run with a ``RunFailed`` event, never an exception.
"""
from __future__ import annotations

import gc
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.errors import ConfigError, DataError, FTStudioError
from ftstudio.core.events import (CheckpointSaved, EvalMetrics, Fanout, LoadProgress, LogLine, NonFiniteStep,
                                  Reporter, RunFailed, RunFinished, RunStarted, StepMetrics)
from ftstudio.core.atomic import is_disk_full
from ftstudio.engine.sinks import MetricsWriter
from ftstudio.engine.train.early_stop import BestTracker, EarlyStop
from ftstudio.engine.train.figures import LossTail, check_first_step
from ftstudio.engine.train.keeping import RunKeeping
from ftstudio.engine.data.collate import device_batch
from ftstudio.engine.train.schedule import row_stats, schedule_lines


class _NonFinite(FTStudioError):
    """The non-finite policy ended the run; ``advice`` goes into RunFailed.advice."""

    def __init__(self, message: str, advice: str):
        super().__init__(message)
        self.advice = advice


class Trainer(RunKeeping):  # RunKeeping (keeping.py): the run folder's lock, checkpoints, resume and export
    def __init__(self, config: RunConfig, reporter: Reporter | None = None, control: Control | None = None,
                 *, resume_from: str | Path | None = None, allow_config_change: bool = False):
        self.cfg, self.allow_config_change = config, allow_config_change
        self.control = control or Control()
        self._user_reporter = reporter or (lambda e: None)
        self.report: Reporter = self._user_reporter
        self.resume_from = Path(resume_from) if resume_from else None
        self.run_dir: Path | None = None
        self.step = 0
        self.micro_batch = 0
        self._ahead = None  # (data position, the next step's micro-batches) collated during backward
        self.compiled = False            # blocks compiled (CUDA): the full loss then compiles its head too
        self._metrics: MetricsWriter | None = None
        self._model_config: dict = {}
        self._last_loss, self._tail = None, LossTail(0)   # the last logged loss; the last steps' losses
        self._lr_factor, self._skips = 1.0, 0   # rollback's LR factor, non-finite steps skipped (checkpointed)
        self._first_eval: dict | None = None
        self._failed = False
        self._best = BestTracker()       # replaced in _run by the run's metric, patience and export_best

    # ------------------------------------------------------------------------------------------------
    def run(self) -> RunFinished | RunFailed:
        try:
            return self._run()
        except FTStudioError as e:
            if is_disk_full(e):
                return self._fail_disk_full(e)
            problems = getattr(e, "problems", [])   # DataError: one line per bad row; one alone is the reason
            for problem in problems[:200] if len(problems) > 1 else []:
                self.report(LogLine(str(problem), level="error"))
            return self._fail(str(e), type(e).__name__, getattr(e, "advice", ""))
        except Exception as e:  # noqa: BLE001 - the GUI must survive anything the engine throws
            import torch
            if isinstance(e, torch.OutOfMemoryError):
                return self._fail_oom(e)
            if is_disk_full(e):  # safetensors, torch.save, metrics.jsonl, the console: the user's to fix
                return self._fail_disk_full(e)
            self.report(LogLine(traceback.format_exc(), level="error"))
            return self._fail(f"{type(e).__name__}: {e}", type(e).__name__)
        finally:
            self._release()

    def _fail(self, reason: str, error_type: str, advice: str = "") -> RunFailed:
        self._failed = True
        event = RunFailed(reason=reason, advice=advice, error_type=error_type, step=self.step,
                          output_dir=str(self.run_dir or ""))
        self.report(event)
        return event

    def _fail_oom(self, error) -> RunFailed:
        from ftstudio.engine.train.oom import explain_run_oom
        self._failed = True  # _release (inside, before the advice is planned) must collect: memory is what failed
        reason, advice = explain_run_oom(error, device=getattr(self, "_device", "cpu"), model_config=self._model_config,
                                         cfg=self.cfg, step=self.step, release=self._release, report=self.report)
        return self._fail(reason, "OutOfMemoryError", advice)

    def _release(self) -> None:
        for name in ("model", "optimizer", "scheduler", "regularizer", "forgetting", "_objective"):
            if hasattr(self, name):
                setattr(self, name, None)
        # A full collection frees GPU tensors held in reference cycles at once, but holds the GIL for a few
        # hundred ms (a visible stall in the GUI): only pay it where device memory must come back now.
        if getattr(self, "_device", "cpu").startswith("cuda") or self._failed:
            gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
        if getattr(self, "_gguf", None) is not None:
            self._gguf.close()
        if self._metrics is not None:
            self._metrics.close()
        self._release_lock()

    # ------------------------------------------------------------------------------------------------
    def _run(self) -> RunFinished | RunFailed:
        import torch

        from ftstudio.engine import data as data_mod
        from ftstudio.engine import models as models_mod
        from ftstudio.engine.models.export import export_options
        from ftstudio.engine.models.load import load_target
        from ftstudio.engine.train.numerics import pick_numerics
        from ftstudio.engine.train import dpo, fast_path
        from ftstudio.engine.train.optim import build_optimizer

        cfg, t_setup = self.cfg, time.perf_counter()
        torch.manual_seed(cfg.train.seed)
        device = self._device = self._pick_device()
        numerics = pick_numerics(cfg.hardware.precision, device)
        fast_path.check_options(cfg, device, self.report)  # before anything is written: an FP8 mode that cannot run

        # 1. Model description and data first: a bad dataset (or a tracker that is not installed) must fail
        # before anything is written.
        from ftstudio.engine.trackers import check_trackers
        check_trackers(cfg.train.report_to)
        info = models_mod.describe_model(cfg.model.source, trust_remote_code=cfg.model.trust_remote_code)
        self._model_config = info.config
        # One full validation pass first, so that every problem (broken lines and bad fields alike) is
        # reported at once, as `ftstudio check-data` would list them.
        report = data_mod.check_data(cfg.data, task=None if cfg.model.task == "auto" else cfg.model.task,
                                     seed=cfg.train.seed)
        errors = [p for p in report.problems if p.severity == "error"]
        if errors:
            raise DataError(report.path, problems=errors)
        for warning in (p for p in report.problems if p.severity != "error"):
            self.report(LogLine(str(warning), "info" if warning.severity == "info" else "warning"))
        fmt = report.format
        dpo.check_method_format(cfg.train.method, fmt)   # a method the data cannot train: refused before the folder
        task = models_mod.resolve_task(cfg.model.task, info, fmt)
        self.report(LogLine(f"Model {info.architecture} ({info.params_text} parameters), "
                            f"data format {fmt}, task {task}, device {device}, precision {numerics.precision}"))
        models_mod.quiet_transformers()
        self._gguf = models_mod.ParseOnce(progress=lambda done, total, s: self.report(  # parsed once; a GUI bar
            LoadProgress("de-quantising GGUF tensors", done, total, s))).open()
        tokenizer = models_mod.load_tokenizer(cfg.model)
        prepared = data_mod.prepare_data(cfg.data, tokenizer, task=task, seed=cfg.train.seed,
                                         label_order=models_mod.head_labels(info.config))   # a trained head's ids
        cfg, prepared = fast_path.apply(cfg, device, prepared, info, self._plan_schedule, self.report)  # one GPU
        numerics = pick_numerics(cfg.hardware.precision, device)   # the memory budget may choose pure bf16
        fresh = [str(w) for w in prepared.warnings if w not in report.problems]  # the check above said the rest
        for line in [*fresh, f"Data: {prepared.summary()}"]:  # nothing cut or dropped unsaid
            self.report(LogLine(line, "info" if line.startswith("Data: ") else "warning"))
        from ftstudio.engine.train.notices import loaded_notices, training_notices  # said also under --quiet
        for line in training_notices(cfg, info, tokenizer, prepared.format, task):
            self.report(LogLine(line, "warning"))
        labels = prepared.label_names

        # 2. The run folder: config.yaml first, so the run can be resumed from its own config.
        self.run_dir = self._open_run_dir()
        self._open_metrics()
        self.user_cfg, self.cfg = self.cfg, cfg   # records keep the user's fields; the steps run the fast path's

        # 3. Model on the device (one GPU: loaded onto it in the training dtype, no host copy). Every weight trains.
        loaded = models_mod.load_model(cfg.model, task=task, num_labels=len(labels) if labels else None,
                                       id2label=dict(enumerate(labels)) if labels else None, tokenizer=tokenizer,
                                       **load_target(device, numerics.param_dtype, getattr(self, "world", 1)))
        model = loaded.model
        self._gguf.close()  # its readers' parsed fields are freed
        self._export_options = export_options(self.cfg, loaded.info.dtype, loaded.model, prepared.format, tokenizer)
        for line in loaded_notices(loaded, self.run_dir, cfg, self._export_options["dtype"]):  # also under --quiet
            self.report(LogLine(line, "warning"))
        if loaded.load_note:  # which loader placed the weights (shard by shard, or from_pretrained and why)
            self.report(LogLine(loaded.load_note))
        self._choose_attention(model, prepared, device)
        if cfg.memory.fp8 != "off":   # FP8 linear layers (torchao), probed against bf16 on the first batch (fp8.py)
            from ftstudio.engine.train.fp8 import setup as setup_fp8
            self.report = setup_fp8(model, prepared, device, numerics, cfg, self.report, params=int(info.params or 0))
        if cfg.memory.activation_checkpointing:
            # Recompute blocks in backward instead of storing their activations (reentrant when offloaded).
            from ftstudio.engine.train.offload import enable as enable_checkpointing
            self.report(LogLine(enable_checkpointing(model, cfg.memory)))
        if cfg.memory.compile and getattr(sys, "frozen", False):
            self.report(LogLine("torch.compile is off in the bundled app (no compiler inside); training "
                                "uncompiled", "warning"))
        elif cfg.memory.compile and device.startswith("cuda"):
            # Each repeated block compiled in place: one block type compiles in seconds, state-dict keys keep
            # their names, and checkpointing stays outside the compiled region.
            from ftstudio.engine.train.compiling import compile_blocks
            compile_blocks(model)
            self.compiled = True
        model = self._place_model(model, device, numerics)
        model.train()
        self.model, self._objective = model, dpo.objective_for(self, cfg, model, prepared, device, numerics)  # dpo/simpo
        n_params = sum(p.numel() for p in model.parameters())

        # θ0 copies (L2-SP, EWC, drift) are taken here, before a resume overwrites the weights.
        from ftstudio.engine.forgetting import Forgetting
        self.forgetting = Forgetting(cfg, model, tokenizer, task, prepared, device, numerics.autocast_dtype,
                                     self.report, run_dir=self.run_dir, new_params=loaded.new_params,
                                     should_stop=lambda: self.control.stop_requested)
        self.regularizer = self.forgetting.regularizer if self.forgetting.penalty_active else None
        self._best = BestTracker.for_run(cfg, task, bool(prepared.val), self.report, model)
        sched = self._plan_schedule(len(prepared.train), len(self.forgetting.general),
                                    tokens=row_stats(prepared.train, self.forgetting.general, cfg))
        for said, level in schedule_lines(cfg, sched):  # warnings, and the length-grouped batches' padding
            self.report(LogLine(said, level))
        if cfg.memory.optimizer_in_backward:
            from ftstudio.engine.train.in_backward import check_in_backward
            check_in_backward(numerics.precision)
        self.optimizer = build_optimizer(model, cfg.optim, device_type=device.split(":")[0],
                                         in_backward=cfg.memory.optimizer_in_backward)
        check_first_step(self.optimizer, model, cfg, self.report, fresh=self.resume_from is None)  # all moved?
        self.scheduler = self._build_scheduler(sched.total_steps)
        scaler = self._grad_scaler(device, numerics)

        if self.resume_from is not None:  # weights, optimizer, schedule, RNG, data position, early stopping
            self._resume(model, scaler)

        self.report(RunStarted(run_dir=str(self.run_dir), model=cfg.model.source, task=task, device=device,
                               precision=numerics.precision, params=n_params, total_steps=sched.total_steps,
                               train_rows=len(prepared.train), val_rows=len(prepared.val),
                               resumed_from_step=self.step, labels=labels))
        self.report(LogLine(f"Setup took {time.perf_counter() - t_setup:.1f} s"))
        if self.step == 0:
            self.forgetting.evaluate(model, 0)
        before = dpo.evaluate_before(self, model, prepared, device, numerics)  # dpo/simpo: held-out pairs at step 0

        try:  # a resumed end checkpoint (keeping.py) has no steps left: its evaluation and export are redone
            status, stop_reason = ("finished", self._ended) if self._ended is not None else (
                self._loop(model, prepared, sched, device, numerics, scaler), "")
        except EarlyStop as stop:  # patience ran out (train/early_stop.py): a finished run, ended early
            status, stop_reason = "finished", str(stop)
            self.report(LogLine(stop_reason))

        # 4. End: the weights safe in a checkpoint, final evaluation (the early stop's evaluation was this step's)
        # and export.
        eval_result, secured = {}, None
        if status == "finished" and cfg.checkpoint.export:
            secured = self._secure_weights(model, scaler, stop_reason)
        if status == "finished":
            if prepared.val:
                eval_result = (self._best.last_result if stop_reason else
                               self._evaluate(model, prepared, device, numerics, task))
            self.forgetting.evaluate(model, self.step)
            self.forgetting.summary(self._first_eval, eval_result, model)
            eval_result = self._best.restore_best(model, self.step, eval_result, self.report)  # export_best
        final_dir = None
        if status == "stopped":
            self._save_checkpoint(model, scaler)
        elif cfg.checkpoint.export:
            final_dir = self._finish_export(model, tokenizer, secured)
        self._check_folder()  # a run whose folder vanished never reports success
        eval_result = {**eval_result, "before": before} if before and eval_result else eval_result
        event = RunFinished(status=status, steps=self.step, **self._tail.summary(self._last_loss), eval=eval_result,
                            output_dir=str(self.run_dir), final_model=str(final_dir) if final_dir else None,
                            elapsed_s=time.perf_counter() - t_setup, stop_reason=stop_reason,
                            best_step=self._best.best_step)
        self.report(event)
        return event

    # ------------------------------------------------------------------------------------------------
    def _loop(self, model, prepared, sched, device, numerics, scaler) -> str:
        import torch

        cfg, control = self.cfg, self.control
        autocast = (torch.autocast(device_type=device.split(":")[0], dtype=numerics.autocast_dtype)
                    if numerics.autocast_dtype is not None else nullcontext())
        params = [p for p in model.parameters()]
        from ftstudio.engine.train.memory_log import PhaseMeter
        from ftstudio.engine.train.offload import offload_context
        self._phases, every = PhaseMeter(device, (prepared, sched)), cfg.hardware.memory_snapshot_every  # per phase
        in_backward = cfg.memory.optimizer_in_backward  # each parameter steps inside backward (train/in_backward.py)
        window_tokens, window_t0 = 0, time.perf_counter()
        run_t0, start_step = time.perf_counter(), self.step
        loss_sum, loss_count, self._tail = torch.zeros((), device=device), 0, LossTail(sched.total_steps)

        while self.step < sched.total_steps:
            control.wait_while_paused()
            if control.stop_requested:
                return "stopped"
            # One optimizer step = grad_accum micro-batches whose gradients add up. The step's loss is the mean
            # over every trained token of the step (examples, for a classifier), not a mean of per-batch means:
            # each micro-batch's mean is weighted by its share of the step's tokens, counted on the CPU batches
            # before any forward (no device sync), so batch × grad_accum × GPUs equals one large batch.
            start, ahead = self.micro_batch, self._ahead
            batches = ahead[1] if ahead and ahead[0] == start else self._batches(prepared, sched, device, start)
            self._ahead, self.micro_batch = None, start + cfg.train.grad_accum
            step_items, grad_scale = self._step_items(sum(b.items for b in batches))
            step_loss = torch.zeros((), device=device)
            self._phases.begin(every and ((self.step + 1) % every == 0 or self.step == 0))
            for batch in batches:
                if batch.items == 0:
                    continue  # nothing under the loss (its mean would be 0/0)
                window_tokens, n, batch = window_tokens + batch.tokens, batch.items, batch.inputs()
                # Offload wraps the forward only: the block inputs it saves go to CPU; the recompute in
                # backward keeps its tensors on the GPU (compiled blocks need their saved strides).
                with offload_context(cfg.memory.offload_activations, device), autocast:
                    loss = self._forward_loss(model, batch)
                self._phases.mark("forward")
                share = n / step_items
                step_loss += loss.detach() * share
                loss = loss * (share * grad_scale)
                if in_backward and self.regularizer is not None:
                    loss = loss + self.regularizer.penalty(model)  # one backward: one step per parameter
                scaler.scale(loss).backward()
                self._phases.mark("backward")
            if self.regularizer is not None and not in_backward:
                # Once per optimizer step: the pull toward θ0 (L2-SP / EWC), its gradient added to the task's.
                scaler.scale(self.regularizer.penalty(model)).backward()
            if self._collate_ahead(device) and self.step + 1 < sched.total_steps:
                # The next step's batches, collated while the GPU runs this backward (else with the GPU idle: 4.3 ms
                # of a 129 ms 1B step, H200, profile_train.py); keyed by the data position, which only use moves.
                self._ahead = (self.micro_batch, self._batches(prepared, sched, device, self.micro_batch))
            scaler.unscale_(self.optimizer)
            max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
            grad_norm = (self.optimizer.grad_norm() if in_backward  # clipped per tensor inside backward
                         else self._clip_grads(params, max_norm))
            step_loss = self._reduce_loss(step_loss)  # several GPUs: the sum of the ranks' shares, on each

            # Non-finite loss or gradients: never let them into the weights. The step's one device sync (the
            # skip is decided before optimizer.step); each `if tensor` would be a sync of its own.
            if not bool(torch.isfinite(torch.stack([step_loss.float(), grad_norm.float()])).all()):
                what = "loss" if not torch.isfinite(step_loss) else "gradient"
                self.optimizer.zero_grad(set_to_none=True)
                self._skips += 1
                if numerics.grad_scaler:
                    # Every skip path ends the scaler's step (unscale_ was called): without update() the next
                    # step's unscale_ raises. An fp16 overflow is the scaler's to handle: it lowers the scale.
                    scaler.update()
                    if what == "gradient":
                        continue
                self._handle_nonfinite(what, self._skips, model, scaler)
                continue

            scaler.step(self.optimizer)
            self._phases.mark("optimizer step")
            scaler.update()
            step_lr = self.optimizer.param_groups[-1]["lr"]   # the LR this step used: read before the schedule moves
            self.scheduler.step()
            self.step += 1
            if every and (self.step % every == 0 or self.step == 1):
                self._memory_snapshot(model, device)  # gradients still exist: they are counted
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum, loss_count = loss_sum + step_loss, loss_count + 1
            self._tail.append(step_loss)   # the end-of-run train loss: a mean over the last steps

            if self.step % cfg.train.log_every == 0 or self.step == sched.total_steps:
                # .item() syncs the GPU: only at log intervals.
                now = time.perf_counter()
                self._last_loss = float(loss_sum.item()) / max(1, loss_count)
                loss_sum.zero_()
                loss_count = 0
                elapsed = now - run_t0
                per_step = elapsed / max(1, self.step - start_step)
                self.report(StepMetrics(step=self.step, loss=self._last_loss,
                                        lr=float(step_lr),
                                        grad_norm=float(grad_norm),
                                        tokens_per_s=self._global_tokens(window_tokens) / max(1e-9, now - window_t0),
                                        epoch=self.micro_batch / sched.batches_per_epoch, elapsed_s=elapsed,
                                        eta_s=per_step * (sched.total_steps - self.step),
                                        total_steps=sched.total_steps, objective=self._objective.take() if self._objective else {}))
                window_tokens, window_t0 = 0, now
            self._periodic(model, prepared, device, numerics, scaler, sched)
        return "finished"

    @staticmethod
    def _collate_ahead(device: str) -> bool:
        return device.startswith("cuda")   # on the CPU the backward has run when the host gets here

    def _batches(self, prepared, sched, device, start: int) -> list:
        """The step's micro-batches from data position ``start`` (pinned, copied without a host stall: collate.py)."""
        out = []
        for mb in range(start, start + self.cfg.train.grad_accum):
            rows = [prepared.train[i] for i in sched.batch_indices(mb)]
            rows += [self.forgetting.general[i] for i in sched.general_indices(mb)]
            if rows:
                out.append(device_batch(prepared.collate, rows, device))
        return out

    # -- hooks: one device here; distributed/fsdp.py's FSDPTrainer overrides them for several GPUs ------
    def _pick_device(self) -> str:
        from ftstudio.engine.train.numerics import pick_device
        return pick_device(self.cfg)

    def _choose_attention(self, model, prepared, device: str) -> None:
        from ftstudio.engine.train.attention import choose_attention
        choose_attention(model, prepared, device, self.cfg, self.report)

    def _place_model(self, model, device, numerics):
        return model.to(device=device, dtype=numerics.param_dtype)

    def _open_metrics(self) -> None:
        from ftstudio.engine.trackers import open_trackers
        self._metrics = MetricsWriter(self.run_dir / "metrics.jsonl")
        self.report = Fanout(self._metrics, *open_trackers(self.cfg, self.run_dir, self._user_reporter),
                             self._user_reporter)

    def _plan_schedule(self, n_train: int, n_general: int, tokens=()):  # tokens: schedule.row_stats
        from ftstudio.engine.train.schedule import plan_schedule
        return plan_schedule(self.cfg, n_train, n_general, *tokens)

    def _build_scheduler(self, total_steps: int):  # the LR range test (train/lr_find.py) sweeps the LR instead
        from ftstudio.engine.train.schedule import build_scheduler
        return build_scheduler(self.optimizer, total_steps, self.cfg.schedule)

    def _grad_scaler(self, device: str, numerics):  # fp16's loss scaler (FSDP: the sharded one)
        import torch
        return torch.amp.GradScaler(device.split(":")[0], enabled=numerics.grad_scaler)

    def _clip_grads(self, params, max_norm: float):
        import torch
        in_step = getattr(self.optimizer, "clip_in_step", None)    # bf16 AdamW: the factor applied in its update
        return in_step(params, max_norm) if in_step else torch.nn.utils.clip_grad_norm_(params, max_norm)

    def _reduce_loss(self, step_loss):
        return step_loss

    def _step_items(self, local: int) -> tuple[int, float]:
        """(trained tokens or examples in the whole step, factor on each loss): one device counts all of them."""
        return max(local, 1), 1.0

    def _global_tokens(self, tokens: int) -> int:
        return tokens

    def _forward_loss(self, model, batch):
        if "labels" in batch and batch["labels"].dim() == 2:  # causal LM: the plan and the loss agree
            from ftstudio.engine.train.loss import training_loss  # fused (Liger) or sliced when chunked
            return training_loss(model, batch, loss=self.cfg.memory.loss, compiled=self.compiled)
        return model(**batch).loss

    def _periodic(self, model, prepared, device, numerics, scaler, sched) -> None:
        cfg, step = self.cfg, self.step
        if cfg.eval.eval_every and step % cfg.eval.eval_every == 0 and step < sched.total_steps:
            if prepared.val:
                with self._phases.phase("evaluation"):
                    self._evaluate(model, prepared, device, numerics, prepared.task)
                self._best.check_patience(step)  # raises EarlyStop out of the loop when patience ran out
            self.forgetting.evaluate(model, step)
        else:
            self.forgetting.maybe_drift(model, step)
        self._check_folder()
        every = cfg.checkpoint.checkpoint_every
        if (every and step % every == 0) or self.control.take_save_request():
            with self._phases.phase("checkpoint"):
                self._save_checkpoint(model, scaler)

    def _handle_nonfinite(self, what: str, skips: int, model, scaler) -> None:
        cfg = self.cfg
        advice = "lower the learning rate, check the data for empty or extreme rows, or use bf16-mixed"
        if cfg.train.nonfinite == "stop" or (cfg.train.nonfinite == "skip" and skips > cfg.train.max_skips):
            self.report(NonFiniteStep(self.step, what, "stopped", advice))
            raise _NonFinite(f"non-finite {what} at step {self.step + 1}", advice)
        if cfg.train.nonfinite == "rollback":
            from ftstudio.engine.train.checkpoint import latest_checkpoint
            ckpt = latest_checkpoint(self.run_dir / "checkpoints") if self.run_dir else None
            if ckpt is None or skips > cfg.train.max_skips:
                self.report(NonFiniteStep(self.step, what, "stopped", "no checkpoint to roll back to; " + advice))
                raise _NonFinite(f"non-finite {what} at step {self.step + 1} and no checkpoint to roll back to", advice)
            state = self._load_checkpoint(ckpt, model, scaler, restore_rng=False)
            self.step = state.step  # the data position (micro_batch) keeps moving past the bad batch
            # Half of the smaller of our LR factor and the checkpoint's (its schedule already carries its own),
            # applied to the optimizer too: the redone step itself runs at the lower LR, not only the next.
            ckpt_factor = (getattr(state, "extra", None) or {}).get("lr_factor", 1.0)
            self._lr_factor = min(self._lr_factor, ckpt_factor) * 0.5
            scale = self._lr_factor / ckpt_factor
            self.scheduler.base_lrs = [b * scale for b in self.scheduler.base_lrs]
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
            self.report(NonFiniteStep(self.step, what, "rolled back", f"rolled back to {ckpt.name} with half the LR"))
            return
        self.report(NonFiniteStep(self.step, what, "skipped", advice))

    # ------------------------------------------------------------------------------------------------
    def _evaluate(self, model, prepared, device, numerics, task) -> dict:
        from ftstudio.engine.train.evaluate import evaluate
        result = evaluate(model, prepared, device=device, autocast_dtype=numerics.autocast_dtype, task=task,
                          batch_size=self.cfg.train.batch_size, max_batches=self.cfg.eval.eval_batches,
                          loss_fn=self._forward_loss, objective=getattr(self, "_objective", None))
        kept = {k: v for k, v in result.items() if v is not None}
        best = self._best.update(self.step, kept, model)  # copies the weights when export_best keeps them
        self.report(EvalMetrics(step=self.step, **result, best=best))
        self._first_eval = self._first_eval or kept
        return kept

    def _memory_snapshot(self, model, device) -> None:
        from ftstudio.engine.train.memory_log import snapshot   # measured, beside this run's plan
        self.report(snapshot(self, model, device))
