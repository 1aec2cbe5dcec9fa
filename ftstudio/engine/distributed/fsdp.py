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


class _RankSchedule:
    """Rank r of W reads global micro-batches r, W+r, 2W+r, ...: one optimizer step covers grad_accum × W
    micro-batches, exactly what one device with grad_accum × W accumulation steps would see."""

    def __init__(self, sched, world: int, rank: int):
        self._s, self._w, self._r = sched, world, rank

    def __getattr__(self, name):
        return getattr(self._s, name)

    @property
    def global_schedule(self):
        return self._s

    @property
    def batches_per_epoch(self) -> float:      # in this rank's micro-batches (the trainer's counter)
        return self._s.batches_per_epoch / self._w

    def batch_indices(self, micro_batch: int) -> list[int]:
        return self._s.batch_indices(micro_batch * self._w + self._r)

    def general_indices(self, micro_batch: int) -> list[int]:
        return self._s.general_indices(micro_batch * self._w + self._r)


class SyncedControl(Control):
    """Rank 0 reads the control file written by the supervisor; every rank gets its flags by broadcast
    at the trainer's per-step poll, so all stop, pause or save at the same step (or none does)."""

    def __init__(self, path: str | None, rank: int, group=None):
        super().__init__()
        self._path, self._rank, self._group = path, rank, group
        self._saves_seen = 0

    def _read(self) -> list[int]:
        try:
            d = json.loads(Path(self._path).read_text(encoding="utf-8")) if self._path else {}
        except (OSError, ValueError):
            d = {}  # not written yet, or caught mid-rename: nothing requested
        return [int(bool(d.get("stop"))), int(bool(d.get("pause"))), int(d.get("save", 0))]

    def sync(self) -> None:
        import torch
        import torch.distributed as dist

        flags = torch.tensor(self._read() if self._rank == 0 else [0, 0, 0], dtype=torch.int64)
        dist.broadcast(flags, src=0, group=self._group)
        stop, pause, saves = flags.tolist()
        if stop:
            self.request_stop()
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


class FSDPTrainer(Trainer):
    """The Trainer on one rank of a ``torchrun`` group; see the module docstring."""

    def __init__(self, config: RunConfig, reporter, control, *, resume_from=None, cpu_group=None):
        super().__init__(config, reporter, control, resume_from=resume_from)
        import torch.distributed as dist

        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self._cpu_group = cpu_group          # gloo group for small host-side exchanges (no GPU sync)
        self._arch_name = None

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
        if self.cfg.memory.loss == "chunked":
            # The chunked loss reads the head's weight outside its module's forward, where FSDP keeps it
            # sharded; the full loss is exact, only its logits take more memory.
            self.cfg = self.cfg.replace(loss="full")
            self.report(LogLine("memory.loss 'chunked' is not available with several GPUs yet; "
                                "using the full loss", "warning"))
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
    def _plan_schedule(self, n_train: int, n_general: int, tokens=(None, None)):
        from ftstudio.engine.train.schedule import plan_schedule

        cfg = self.cfg.replace(grad_accum=self.cfg.train.grad_accum * self.world)
        return _RankSchedule(plan_schedule(cfg, n_train, n_general, task_tokens=tokens[0], general_tokens=tokens[1]),
                             self.world, self.rank)

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
    def _save_checkpoint(self, model, scaler) -> None:
        from ftstudio.engine.distributed.checkpoint import save_sharded
        path = save_sharded(self.run_dir / "checkpoints", self.step, model=model, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=scaler, micro_batch=self.micro_batch,
                            keep_last=self.cfg.checkpoint.keep_last, group=self._cpu_group)
        self.report(CheckpointSaved(step=self.step, path=str(path)))

    def _load_checkpoint(self, ckpt, model, scaler, *, restore_rng: bool = True):
        from ftstudio.engine.distributed.checkpoint import load_sharded
        return load_sharded(ckpt, model=model, optimizer=self.optimizer, scheduler=self.scheduler,
                            scaler=scaler, restore_rng=restore_rng)

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

