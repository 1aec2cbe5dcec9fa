"""The ``torchrun`` entry of a multi-GPU run: the same Trainer loop, with FSDP2 sharding.

``torchrun --standalone --nproc-per-node N -m ftstudio.engine.distributed RUN_CONFIG.yaml [--resume RUN_DIR]``
starts one process per GPU (``distributed/__main__.py`` calls :func:`main`). Each runs :class:`FSDPTrainer`, a
:class:`~ftstudio.engine.train.Trainer` whose
hooks shard the model with ``torch.distributed.fsdp.fully_shard`` (each transformer block, then the root: the
seed's ZeRO-3 — weights, gradients and optimizer state split N ways), feed each rank its own slice of every
global batch, average the loss over ranks, and save checkpoints with ``torch.distributed.checkpoint`` (DCP).

Only rank 0 talks: it prints every event as one JSON line on stdout (``{"event": ...}``), which
:mod:`ftstudio.engine.distributed.launch` turns back into events, and it alone writes ``metrics.jsonl``. Other ranks print
a failure to stderr and exit non-zero, so ``torchrun`` tears the group down instead of hanging.
Stop / pause / save-now arrive through a small JSON control file that rank 0 reads and broadcasts at every
step, so all ranks act on the same step.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.events import CheckpointSaved, Event, LogLine, RunFailed, RunFinished, event_from_dict
from ftstudio.engine.distributed.launch import CONTROL_ENV, RANK_FAILED
from ftstudio.engine.train import Trainer


def mixed_precision_policy(numerics):
    """FSDP's policy for our precisions: bf16-/fp16-mixed gather weights in the compute dtype and reduce
    gradients in fp32 while the sharded master weights stay fp32 (the 16N recipe); bf16 and fp32 as stored."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if numerics.autocast_dtype is not None:
        return MixedPrecisionPolicy(param_dtype=numerics.autocast_dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model, numerics, mesh):
    """``fully_shard`` each transformer block, then the root (embeddings, final norm, head); in place.

    Per-block units let FSDP gather one block's weights at a time and overlap that with compute. Works on a
    model on the CPU (FSDP moves each unit to the mesh's device as it shards it) or already on the device.
    """
    from torch.distributed.fsdp import fully_shard

    from ftstudio.engine.models.structure import find_block_list

    policy = mixed_precision_policy(numerics)
    blocks = find_block_list(model)
    if blocks is not None:
        for i, block in enumerate(blocks):
            # The last block is needed first in backward: keeping it gathered saves one all-gather.
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


LOSS_METHOD = "ftstudio_causal_lm_loss"


def _causal_lm_loss_method(self, batch: dict, loss: str, compiled: bool):
    from ftstudio.engine.train.loss import training_loss
    return training_loss(self, batch, loss=loss, compiled=compiled)


def register_loss_method(model) -> None:
    """The chunked, fused (Liger) and compiled losses run the base model and read the head's weight outside
    the model's ``forward``, where FSDP2 keeps the root's weights (embeddings, final norm, head) sharded. As
    torchtitan keeps the loss behind the model's own forward, the loss becomes a method of the root module that
    FSDP treats as a forward (``register_fsdp_forward_method``): its pre-forward gathers those weights and sets
    up their reduce-scatter in backward, the blocks' own hooks gather theirs."""
    import types

    from torch.distributed.fsdp import register_fsdp_forward_method

    setattr(model, LOSS_METHOD, types.MethodType(_causal_lm_loss_method, model))
    register_fsdp_forward_method(model, LOSS_METHOD)


class _RankSchedule:
    """Rank r of W reads global micro-batches r, W+r, 2W+r, ...: one optimizer step covers grad_accum × W
    micro-batches, exactly what one device with grad_accum × W accumulation steps would see.

    The trainer's ``micro_batch`` counts this rank's micro-batches; a checkpoint stores the global position
    (:meth:`to_global`), and a resume on another number of ranks restarts every rank at that global sample
    (``shift``: the remainder when the global position is not a multiple of the new W)."""

    def __init__(self, sched, world: int, rank: int):
        self._s, self._w, self._r = sched, world, rank
        self.shift = 0

    def __getattr__(self, name):
        return getattr(self._s, name)

    @property
    def global_schedule(self):
        return self._s

    @property
    def batches_per_epoch(self) -> float:      # in this rank's micro-batches (the trainer's counter)
        return self._s.batches_per_epoch / self._w

    def _global(self, micro_batch: int) -> int:
        return micro_batch * self._w + self._r + self.shift

    def to_global(self, micro_batch: int) -> int:
        """The global micro-batches consumed when this rank has read ``micro_batch`` of its own."""
        return micro_batch * self._w + self.shift

    def from_global(self, position: int) -> int:
        """This rank's counter for a global position; sets ``shift`` so that reading resumes exactly there."""
        local, self.shift = divmod(int(position), self._w)
        return local

    def batch_indices(self, micro_batch: int) -> list[int]:
        return self._s.batch_indices(self._global(micro_batch))

    def general_indices(self, micro_batch: int) -> list[int]:
        return self._s.general_indices(self._global(micro_batch))


class SyncedControl(Control):
    """Rank 0 reads the control file written by the supervisor; every rank gets its flags by broadcast
    at the trainer's per-step poll, so all stop, pause or save at the same step (or none does)."""

    def __init__(self, path: str | None, rank: int, group=None):
        super().__init__()
        self._path, self._rank, self._group = path, rank, group
        self._saves_seen = 0
        self._local_stop = False

    def request_stop(self) -> None:
        """A stop asked on this rank alone (a signal): it takes effect at the next sync, on every rank at once,
        never between a sync and the trainer's check (that rank would leave the others in a collective)."""
        self._local_stop = True

    def _read(self) -> list[int]:
        try:
            d = json.loads(Path(self._path).read_text(encoding="utf-8")) if self._path else {}
        except (OSError, ValueError):
            d = {}  # not written yet, or caught mid-rename: nothing requested
        return [int(bool(d.get("stop"))), int(bool(d.get("pause"))), int(d.get("save", 0))]

    def sync(self) -> None:
        import torch
        import torch.distributed as dist

        # Rank 0 brings the supervisor's requests; every rank its own stop (a SIGTERM that reached it directly, as
        # SLURM signals every process of a job): the maximum over ranks, so all stop at the same step.
        flags = torch.tensor(self._read() if self._rank == 0 else [0, 0, 0], dtype=torch.int64)
        flags[0] = max(int(flags[0]), int(self._local_stop))
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._group)
        stop, pause, saves = flags.tolist()
        if stop:
            super().request_stop()
        elif pause:
            self.pause()
        else:
            self.resume()
        if saves > self._saves_seen:
            self._saves_seen = saves
            self.request_save()

    def wait_while_paused(self, poll_s: float = 0.2) -> None:
        self.sync()
        while self.paused and not self.stop_requested:
            time.sleep(poll_s)
            self.sync()


LOW_BIT = ("adamw8bit", "adamw4bit")


def sharded_optimizer(cfg: RunConfig) -> tuple[RunConfig, str | None]:
    """(the config a sharded run trains with, the warning that says what changed, or None).

    torchao's low-bit AdamW compiles its update over the optimizer-state subclass, and Dynamo cannot trace that
    subclass inside FSDP2's DTensors (seen on the H200, torch 2.11 + torchao 0.18: "OptimState8bit dispatch:
    aten.view.dtype"); bitsandbytes' kernels take no DTensor either. Sharding already divides the optimizer
    state by the number of GPUs, so a sharded run uses AdamW (bf16 moments with stochastic rounding when the
    weights are bf16) and says so, instead of failing at its first step."""
    if cfg.optim.optimizer not in LOW_BIT or cfg.hardware.device == "cpu":
        return cfg, None
    return cfg.replace(optimizer="adamw"), (
        f"FSDP2: optimizer {cfg.optim.optimizer} cannot step FSDP's sharded tensors; using adamw (its state is "
        "sharded over the GPUs instead: 4 bytes a parameter with bf16 weights, divided by the GPU count)")


def sharded_grad_scaler(device_type: str, enabled: bool):
    """torch's ShardedGradScaler, with its "found inf" flag 0-dimensional as the fused AdamW expects: the
    sharded scaler makes it of shape [1], and the fused step's ``steps - found_inf`` then fails ("output with
    shape [] doesn't match the broadcast shape [1]", seen on the H200 with fp16-mixed)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    class _Scaler(ShardedGradScaler):
        def _unscale_grads_(self, optimizer, inv_scale, found_inf, allow_fp16=True):
            per_device = super()._unscale_grads_(optimizer, inv_scale, found_inf, allow_fp16)
            return {dev: t.reshape(()) for dev, t in per_device.items()}

    return _Scaler(device_type, enabled=enabled)


class FSDPTrainer(Trainer):
    """The Trainer on one rank of a ``torchrun`` group; see the module docstring."""

    def __init__(self, config: RunConfig, reporter, control, *, resume_from=None, cpu_group=None):
        super().__init__(config, reporter, control, resume_from=resume_from)
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self._cpu_group = cpu_group          # gloo group for small host-side exchanges (no GPU sync)
        self._arch_name = None
        self.cfg, note = sharded_optimizer(self.cfg)
        if note:
            self.report(LogLine(note, level="warning"))

    # -- placement --------------------------------------------------------------------------------
    def _pick_device(self) -> str:
        import torch

        if self.cfg.hardware.device == "cpu":
            return "cpu"
        torch.cuda.set_device(self.local_rank)
        return f"cuda:{self.local_rank}"

    def _place_model(self, model, device, numerics):
        from torch.distributed.device_mesh import init_device_mesh

        self._arch_name = type(model).__name__
        model = model.to(dtype=numerics.param_dtype)
        mesh = init_device_mesh(device.split(":")[0], (self.world,))
        shard_model(model, numerics, mesh)
        register_loss_method(model)
        self.report(LogLine(f"FSDP2: weights, gradients and optimizer state sharded over {self.world} "
                            f"processes ({device.split(':')[0]})"))
        return model

    # -- run folder and reporting: rank 0 alone writes -------------------------------------------------
    def _open_run_dir(self) -> Path:
        import torch.distributed as dist

        # Rank 0 names and creates the folder (a generated name has the time in it: ranks would differ)
        # and tells the others, or tells them why it could not, so every rank fails alike.
        shared: list = [None, None]
        if self.rank == 0:
            try:
                shared[0] = str(super()._open_run_dir())
            except Exception as e:  # noqa: BLE001 - re-raised below on every rank
                shared[1] = e
        dist.broadcast_object_list(shared, src=0, group=self._cpu_group)
        if shared[1] is not None:
            raise shared[1]
        return Path(shared[0])

    def _open_metrics(self) -> None:
        if self.rank == 0:
            super()._open_metrics()

    # -- the step ----------------------------------------------------------------------------------------
    def _plan_schedule(self, n_train: int, n_general: int, tokens=()):
        from ftstudio.engine.train.schedule import plan_schedule

        # The global step accumulates grad_accum × W micro-batches. Only the schedule sees that number: the
        # config's own checks (optimizer_in_backward needs grad_accum 1) are about the user's grad_accum, which
        # each rank still runs (RunConfig.replace would re-validate, and blame a grad_accum nobody set).
        cfg = copy.copy(self.cfg)
        cfg.train = dataclasses.replace(self.cfg.train, grad_accum=self.cfg.train.grad_accum * self.world)
        sched = plan_schedule(cfg, n_train, n_general, *tokens)
        sched.ranks = self.world          # an epoch's last step gives every rank a row (schedule.py)
        self._sched = _RankSchedule(sched, self.world, self.rank)
        return self._sched

    def _forward_loss(self, model, batch):
        from ftstudio.engine.train.loss import bypasses_forward

        causal = "labels" in batch and batch["labels"].dim() == 2
        if causal and bypasses_forward(model, batch, loss=self.cfg.memory.loss, compiled=self.compiled):
            return getattr(model, LOSS_METHOD)(batch, self.cfg.memory.loss, self.compiled)
        return super()._forward_loss(model, batch)

    def _grad_scaler(self, device: str, numerics):
        """fp16: torch's sharded grad scaler all-reduces "found inf" over the ranks, so an overflow on one rank
        skips the step on all of them and the loss scales never diverge."""
        return sharded_grad_scaler(device.split(":")[0], enabled=numerics.grad_scaler)

    def _evaluate(self, model, prepared, device, numerics, task) -> dict:
        """Each rank scores its share of the validation batches; the sums are all-reduced (evaluate.py)."""
        from ftstudio.core.events import EvalMetrics
        from ftstudio.engine.train.evaluate import evaluate

        result = evaluate(model, prepared, device=device, autocast_dtype=numerics.autocast_dtype, task=task,
                          batch_size=self.cfg.train.batch_size, max_batches=self.cfg.eval.eval_batches,
                          loss_fn=self._forward_loss, shard=(self.rank, self.world, self._cpu_group))
        kept = {k: v for k, v in result.items() if v is not None}
        best = self._best.update(self.step, kept, model)
        self.report(EvalMetrics(step=self.step, **result, best=best))
        self._first_eval = self._first_eval or kept
        return kept

    def _clip_grads(self, params, max_norm: float):
        import torch

        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)   # a DTensor norm: the global value, on every rank
        return full() if callable(full) else norm

    def _reduce_loss(self, step_loss):
        import torch.distributed as dist

        dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)   # each rank holds its tokens' share of the mean
        return step_loss

    def _step_items(self, local: int) -> tuple[int, float]:
        """The step's trained tokens over all ranks (a host-side all-reduce on the gloo group, no GPU sync);
        each loss is scaled by the world size because FSDP averages the ranks' gradients."""
        return max(self._global_tokens(local), 1), float(self.world)

    def _global_tokens(self, tokens: int) -> int:
        import torch
        import torch.distributed as dist

        t = torch.tensor([tokens], dtype=torch.int64)
        dist.all_reduce(t, group=self._cpu_group)
        return int(t.item())

    def _memory_snapshot(self, model, device) -> None:
        """Every rank measures its own GPU; rank 0 reports one snapshot per GPU (the bar shows each)."""
        import torch.distributed as dist

        from ftstudio.engine.memory import measure

        snap = measure(model, self.optimizer, device, self.step)
        gpus = self.cfg.hardware.gpus
        if snap.device.startswith("cuda") and self.rank < len(gpus):
            snap.device = f"cuda:{gpus[self.rank]}"      # the physical index the user ticked
            try:
                from ftstudio.engine.hardware import nvml_used_bytes
                snap.nvml_used = nvml_used_bytes(gpus[self.rank])   # NVML ignores CUDA_VISIBLE_DEVICES
            except Exception:  # noqa: BLE001 - NVML is a bonus
                pass
        gathered = [None] * self.world
        dist.all_gather_object(gathered, snap.to_dict(), group=self._cpu_group)
        for d in gathered:
            self.report(event_from_dict(d))

    # -- checkpoints and export ------------------------------------------------------------------------
    def _save_checkpoint(self, model, scaler, *, ended: str | None = None) -> None:
        from ftstudio.engine.distributed.checkpoint import save_sharded

        # What a single-device checkpoint carries (train/keeping.py: the rollback's LR factor, early stopping, the
        # config, the forgetting summary's first figures); the data position is global, so another number of ranks
        # resumes at the same sample. An end checkpoint (``ended``) keeps the optimizer too: DCP saves both at once.
        self._check_folder()
        extra = self._extra_state(ended)
        path = save_sharded(self.run_dir / "checkpoints", self.step, model=model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=scaler,
                            micro_batch=self._sched.to_global(self.micro_batch),
                            keep_last=self.cfg.checkpoint.keep_last, group=self._cpu_group, extra=extra)
        self.report(CheckpointSaved(step=self.step, path=str(path)))

    def _load_checkpoint(self, ckpt, model, scaler, *, restore_rng: bool = True):
        from ftstudio.engine.distributed.checkpoint import load_sharded

        state = load_sharded(ckpt, model=model, optimizer=self.optimizer, scheduler=self.scheduler,
                             scaler=scaler, restore_rng=restore_rng)
        if restore_rng:   # a resume (a rollback keeps reading forward from where it is)
            state.micro_batch = self._sched.from_global(state.micro_batch)
            self._first_eval = state.extra.get("first_eval") or self._first_eval
            retention = state.extra.get("first_retention")
            if retention and getattr(self, "forgetting", None) is not None:
                self.forgetting.first_retention = event_from_dict(retention)
        return state

    def _export(self, model, tokenizer) -> Path:
        from ftstudio.engine.distributed.checkpoint import export_full
        final = self.run_dir / "final"
        export_full(model, tokenizer, final, arch_name=self._arch_name, group=self._cpu_group,
                    **self._export_options)
        self.report(LogLine(f"Exported the fine-tuned model to {final}"))
        return final


# -- the process entry ---------------------------------------------------------------------------------

def _stdout_reporter(event: Event) -> None:
    print(json.dumps(event.to_dict(), default=str), flush=True)


def _failure_reporter(rank: int):
    def report(event: Event) -> None:
        if isinstance(event, RunFailed):
            print(RANK_FAILED + json.dumps({"rank": rank, **event.to_dict()}, default=str),
                  file=sys.stderr, flush=True)
        elif isinstance(event, LogLine) and event.level == "error":
            print(f"[rank {rank}] {event.message}", file=sys.stderr, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    p = argparse.ArgumentParser(prog="python -m ftstudio.engine.distributed")
    p.add_argument("config")
    p.add_argument("--resume", default=None)
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    reporter = _stdout_reporter if rank == 0 else _failure_reporter(rank)
    try:
        cfg = RunConfig.load(args.config)
    except Exception as e:  # noqa: BLE001 - a clean failure line, not a traceback
        reporter(RunFailed(reason=str(e), error_type=type(e).__name__))
        return 1
    use_nccl = cfg.hardware.device != "cpu" and torch.cuda.is_available()
    if use_nccl:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        cpu_group = dist.new_group(backend="gloo")
    else:
        dist.init_process_group("gloo")
        cpu_group = None
    control = SyncedControl(os.environ.get(CONTROL_ENV), rank, cpu_group)
    from ftstudio.core.control import SignalStop
    SignalStop(control).install()   # SIGTERM/SIGHUP/SIGINT sent to a rank: stop with the others, checkpointed
    result = FSDPTrainer(cfg, reporter, control, resume_from=args.resume, cpu_group=cpu_group).run()
    sys.stdout.flush()
    sys.stderr.flush()
    if not isinstance(result, RunFinished):
        os._exit(1)   # skip teardown that could wait on peers: torchrun ends the other ranks
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    # The run's outcome is already on stdout and on disk; the interpreter's own teardown (gloo and torch threads,
    # C-extension finalisers) once aborted a finished rank with SIGABRT, which the supervisor must read as a death.
    os._exit(0)

