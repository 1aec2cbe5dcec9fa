"""Keeping a run's work, around its checkpoints: the trainer's methods that own the run folder (a mixin of
``Trainer``; ``FSDPTrainer`` overrides the checkpoint and export hooks for several ranks).

- **One owner.** The folder is locked (core/runlock.py) before anything is written in it; a second process is
  refused naming the first one's pid. The folder's identity is checked before every write and before success is
  reported: a run whose folder was deleted or replaced mid-run fails, it never says "finished".
- **A resume trains what the checkpoint trained.** Every checkpoint records the run's config; ``--resume`` refuses
  a changed ``config.yaml`` naming each field, unless ``allow_config_change`` (``--allow-config-change``) says the
  change is deliberate (a changed learning rate then really applies). Early stopping's best-so-far, its patience
  count, export_best's weights, the first evaluation and retention travel in every checkpoint too.
- **The weights are safe before the export.** A finished run first writes an end checkpoint (weights and state,
  no optimizer) unless one of this step exists, then ``final/`` atomically (models/export.py); the end checkpoint
  is removed after a successful export when the user keeps no checkpoints. A failed export leaves that checkpoint
  and says the one command that finishes it.
- **A full disk is the user's to fix**: one line with the space needed and the command that continues.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from ftstudio.core.atomic import DiskFullError, clean_leftovers, discard, disk_full_message, is_disk_full
from ftstudio.core.errors import ConfigError, FTStudioError
from ftstudio.core.events import CheckpointSaved, LogLine, RunFailed, event_from_dict
from ftstudio.core.runlock import RunLock
from ftstudio.core.runs import atomic_write_text, open_run_dir

# Fields a resume may differ in without changing what is trained: where the run lives and how it reports, and how
# the hardware computes it (the device, the number of GPUs: DCP reshards; activation checkpointing, compile...).
# The global batch is compared as grad_accum × GPUs, so half the ranks accumulating twice as much is no change.
HARMLESS = {("train", "output"), ("train", "run_name"), ("train", "log_every"), ("train", "report_to"),
            ("checkpoint", "checkpoint_every"), ("checkpoint", "keep_last"), ("hardware", "memory_snapshot_every"),
            ("hardware", "device"), ("hardware", "gpus"),
            ("checkpoint", "export"), ("checkpoint", "export_dtype")}   # what final/ is written as, nothing trained
HARMLESS_SECTIONS = {"memory"}


class RunFolderLost(FTStudioError):
    """The run folder was deleted, moved or replaced while the run was writing to it."""


class ExportFailed(FTStudioError):
    """The export to final/ failed; the message says where the weights are and the command that finishes it."""


def resume_command(run_dir) -> str:
    return f"ftstudio train --resume {shlex.quote(str(run_dir))}"


def data_identity(cfg) -> dict[str, str]:
    """``{field: "<bytes> bytes, sha256 <hex>"}`` for each data file the run reads (a folder or a hub id is named
    by its config field alone): the checkpoint keeps it, so a resume notices an edited dataset."""
    import hashlib

    from ftstudio.engine.data.prepare import source_path

    out = {}
    for name in ("dataset", "val_dataset"):
        value = getattr(cfg.data, name, None)
        p = Path(source_path(value)) if value else None
        if p is None or not p.is_file():
            continue
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f"data.{name}"] = f"{p.stat().st_size} bytes, sha256 {h.hexdigest()[:16]}"
    return out


def config_changes(saved: dict, now: dict) -> list[str]:
    """``section.field old → new`` for each field that defines the run and differs (a field added since the
    checkpoint was written, absent there, is no change)."""
    def global_accum(cfg: dict) -> int | None:
        accum, gpus = (cfg.get("train") or {}).get("grad_accum"), (cfg.get("hardware") or {}).get("gpus") or [0]
        return accum * len(gpus) if isinstance(accum, int) else accum

    out = []
    for section, fields in now.items():
        for name, value in fields.items():
            old = (saved.get(section) or {}).get(name, value)
            if (section, name) == ("train", "grad_accum"):
                old, value = global_accum(saved), global_accum(now)
                name = "grad_accum × GPUs"
            if (section, name) not in HARMLESS and section not in HARMLESS_SECTIONS and old != value:
                out.append(f"{section}.{name} {old!r} → {value!r}")
    return out


class RunKeeping:
    """Mixed into Trainer: expects ``cfg``, ``run_dir``, ``step``, ``micro_batch``, ``report``, ``resume_from``,
    ``optimizer``, ``scheduler``, ``_best``, ``_lr_factor``, ``_skips``, ``_first_eval``."""

    _lock: RunLock | None = None
    _ended: str | None = None            # a resumed early stop's end checkpoint: the loop is over (its reason)
    _config_changed = False              # resumed with --allow-config-change and a change
    _changed_lr: float | None = None     # the checkpoint's LR, when the change includes optim.lr
    _resumed_end = False                 # resumed from an end checkpoint (weights only) to finish the export
    allow_config_change: bool = False

    # -- the folder ---------------------------------------------------------------------------------
    def _open_run_dir(self) -> Path:
        run_dir = open_run_dir(self.cfg, self.resume_from)
        lock = RunLock(run_dir).acquire()          # ConfigError naming the other process's pid
        self._lock = lock
        if lock.previous_pid:
            self.report(LogLine(f"Took over the run folder from process {lock.previous_pid}, which ended without "
                                "releasing it (killed or crashed)", "warning"))
        clean_leftovers(run_dir)                   # a killed export's .tmp-final-<pid>
        self._data_identity()                      # the data as read at setup, before any step
        if self.resume_from is not None:
            self._check_resume_config(run_dir)
        return run_dir

    def _data_identity(self) -> dict:
        if getattr(self, "_data_id", None) is None:   # hashed once per process: the files are read at setup
            self._data_id = data_identity(self.cfg)
        return self._data_id

    def _check_folder(self) -> None:
        if self._lock is not None and not self._lock.folder_intact():
            raise RunFolderLost(f"the run folder {self.run_dir} was deleted, moved or replaced during the run "
                                f"(noticed at step {self.step}); nothing more is written there and this run did "
                                "not finish")

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- resume -------------------------------------------------------------------------------------
    def _check_resume_config(self, run_dir: Path) -> None:
        from ftstudio.engine.train.checkpoint import latest_checkpoint, read_state

        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise ConfigError("resume", f"{run_dir} has no complete checkpoint to resume from")
        extra = read_state(ckpt).get("extra") or {}
        saved = extra.get("config")
        if not saved:
            return   # a checkpoint of an older FT Studio: nothing to compare with
        changes = config_changes(saved, self.cfg.to_dict())
        data_then, data_now = extra.get("data") or {}, self._data_identity()
        changes += [f"{k} contents ({data_then[k]} → {data_now.get(k, 'gone')})" for k in data_then
                    if data_then[k] != data_now.get(k) and f"{k} " not in " ".join(changes)]
        if changes and not self.allow_config_change:
            raise ConfigError("resume", f"{run_dir / 'config.yaml'} differs from what {ckpt.name} trained: "
                                        f"{'; '.join(changes)}. Restore it, start a new run, or pass "
                                        "--allow-config-change to continue with the change")
        self._config_changed = bool(changes)
        if changes:
            self.report(LogLine(f"Resuming with a changed config (--allow-config-change): {'; '.join(changes)}",
                                "warning"))
            self._changed_lr = (saved.get("optim") or {}).get("lr")
            atomic_write_text(run_dir / "config.yaml", self.cfg.to_yaml())   # the record says what trains now

    def _resume(self, model, scaler) -> None:
        from ftstudio.engine.train.checkpoint import latest_checkpoint, load_best_weights

        ckpt = latest_checkpoint(self.run_dir / "checkpoints")
        if ckpt is None:
            raise ConfigError("resume", f"{self.run_dir} has no complete checkpoint to resume from")
        state = self._load_checkpoint(ckpt, model, scaler)
        self.step, self.micro_batch = state.step, state.micro_batch
        extra = getattr(state, "extra", None) or {}
        self._lr_factor, self._skips = extra.get("lr_factor", 1.0), extra.get("skips", 0)
        self._best.load_state_dict(extra.get("best"), load_best_weights(ckpt))
        self._first_eval = extra.get("first_eval") or self._first_eval
        retention = extra.get("first_retention")
        if retention and getattr(self, "forgetting", None) is not None:
            self.forgetting.first_retention = event_from_dict(retention)
        # An early stop's end checkpoint: its loop is over (a normal end has no steps left anyway). A deliberate
        # config change (a longer run, more patience) trains on instead.
        self._ended = None if self._config_changed else (extra.get("ended") or None)
        self._resumed_end = extra.get("ended") is not None and not (Path(ckpt) / "optimizer.pt").exists()
        old_lr = getattr(self, "_changed_lr", None)
        if old_lr and old_lr != self.cfg.optim.lr:   # a deliberate change: the scheduler's saved peak LR yields
            scale = self.cfg.optim.lr / old_lr
            self.scheduler.base_lrs = [b * scale for b in self.scheduler.base_lrs]
            for group in self.optimizer.param_groups:
                group["lr"] *= scale
        self.report(LogLine(f"Resumed from {ckpt} (step {self.step})"))

    # -- checkpoints ----------------------------------------------------------------------------------
    def _extra_state(self, ended: str | None = None) -> dict:
        retention = getattr(getattr(self, "forgetting", None), "first_retention", None)
        extra = {"lr_factor": self._lr_factor, "skips": self._skips, "best": self._best.state_dict(),
                 "first_eval": self._first_eval, "data": self._data_identity(),
                 "config": getattr(self, "user_cfg", self.cfg).to_dict(),   # the user's fields, not the fast path's
                 "first_retention": retention.to_dict() if retention is not None else None}
        if ended is not None:
            extra["ended"] = ended
        return extra

    def _save_checkpoint(self, model, scaler, *, ended: str | None = None) -> None:
        from ftstudio.engine.train.checkpoint import save_checkpoint
        self._check_folder()
        path = save_checkpoint(self.run_dir / "checkpoints", self.step, model=model,
                               optimizer=None if ended is not None else self.optimizer, scheduler=self.scheduler,
                               scaler=scaler, micro_batch=self.micro_batch, keep_last=self.cfg.checkpoint.keep_last,
                               extra=self._extra_state(ended), best_weights=self._best.weights)
        self.report(CheckpointSaved(step=self.step, path=str(path)))

    def _load_checkpoint(self, ckpt, model, scaler, *, restore_rng: bool = True):
        from ftstudio.engine.train.checkpoint import load_checkpoint
        return load_checkpoint(ckpt, model=model, optimizer=self.optimizer, scheduler=self.scheduler,
                               scaler=scaler, restore_rng=restore_rng)

    # -- the end --------------------------------------------------------------------------------------
    def _secure_weights(self, model, scaler, stop_reason: str) -> Path | None:
        """Before the export: the weights in a complete checkpoint of this step (the one just made, or None when
        one already existed). A full disk here is said, and the export still tried: it may fit where this did not."""
        ckpt = self.run_dir / "checkpoints" / f"step-{self.step}"
        if ckpt.is_dir():   # this step's periodic checkpoint (or the resumed end one): marked as the end
            if getattr(self, "rank", 0) == 0:
                from ftstudio.engine.train.checkpoint import mark_ended
                mark_ended(ckpt, stop_reason)
            # An end checkpoint resumed to finish the export: removed with the rest once final/ holds the weights.
            return ckpt if self._resumed_end else None
        try:
            self._save_checkpoint(model, scaler, ended=stop_reason)
        except DiskFullError as e:
            self.report(LogLine(f"{e} Trying the export anyway.", "warning"))
            return None
        return ckpt if ckpt.is_dir() else None   # a trainer that keeps no checkpoints (a sweep's trial) made none

    def _finish_export(self, model, tokenizer, made: Path | None) -> Path:
        """``final/`` atomically; on failure, one line with what is kept and the command that finishes it."""
        self._check_folder()
        try:
            final = self._export(model, tokenizer)
        except Exception as e:  # noqa: BLE001 - any failure: the weights are in the checkpoint, say so
            from ftstudio.engine.train.checkpoint import latest_checkpoint
            kept = latest_checkpoint(self.run_dir / "checkpoints")
            at_end = kept is not None and kept.name == f"step-{self.step}"
            how = (f"the trained weights are safe in {kept}; finish with: ftstudio export {shlex.quote(str(self.run_dir))}"
                   if at_end else f"no checkpoint holds this step's weights; {self._continue_hint()}")
            if is_disk_full(e):
                need = sum(p.numel() * self._export_options["dtype"].itemsize for p in model.parameters())
                raise ExportFailed(f"the export failed: {disk_full_message(self.run_dir, need)}; no final/ was "
                                   f"written; free some space; {how}") from None
            if isinstance(e, FTStudioError):
                raise ExportFailed(f"the export failed: {e}; {how}") from None
            self.report(LogLine(f"the export failed ({type(e).__name__}: {e}); {how}", "error"))
            raise
        if made is not None and not self.cfg.checkpoint.checkpoint_every:
            discard(made)   # the user keeps no checkpoints: final/ now holds these weights
            try:
                made.parent.rmdir()
            except OSError:
                pass
        self._check_folder()
        return final

    def _export(self, model, tokenizer) -> Path:
        from ftstudio.engine.models.export import save_final
        final = save_final(model, tokenizer, self.run_dir / "final", **self._export_options)
        self.report(LogLine(f"Exported the fine-tuned model to {final}"))
        return final

    # -- failures ---------------------------------------------------------------------------------------
    def _continue_hint(self) -> str:
        from ftstudio.engine.train.checkpoint import latest_checkpoint
        if self.run_dir is not None and latest_checkpoint(Path(self.run_dir) / "checkpoints") is not None:
            return f"continue with: {resume_command(self.run_dir)}"
        return "no checkpoint was saved (checkpoint_every keeps some): start the run again"

    def _fail_disk_full(self, e: BaseException) -> RunFailed:
        """A full disk anywhere (a checkpoint, metrics.jsonl, a tracker, the console): one line and what continues."""
        if isinstance(e, DiskFullError):
            reason = str(e)
        else:
            where = getattr(e, "filename", None) or self.run_dir or self.cfg.train.output
            reason = f"could not write: {disk_full_message(where)}"
        self._disable_full_sinks()
        # One line: what happened, the space it needs, and the command that continues.
        try:
            return self._fail(f"{reason.rstrip('.')}; free some space, then {self._continue_hint()}", "DiskFullError")
        except OSError:   # the console's own stream is on the full disk: the caller still gets the event
            return RunFailed(reason=reason, error_type="DiskFullError", step=self.step,
                             output_dir=str(self.run_dir or ""))

    def _disable_full_sinks(self) -> None:
        """metrics.jsonl cannot take the failure line on a full disk: stop writing it (the console still says it)."""
        metrics = getattr(self, "_metrics", None)
        if metrics is not None:
            metrics.broken = True
