"""One torchrun launch of the FSDP matrix (tests/test_fsdp_matrix.py): every combination of options × precision ×
regularizer below trains 2 steps on two gloo ranks, stops after step 1 (a DCP checkpoint), resumes to step 2,
and is compared with one process accumulating the same global batch.

``torchrun --nproc-per-node 2 tests/fsdp_matrix_worker.py MODELS_JSON OUT_DIR``: the single-device references
run on rank 0 first, then the sharded runs go one after another; rank 0
writes ``OUT_DIR/results.json`` (per combination: losses, evaluations, drift, the weights' update gap).
Combinations are pairwise, not the full product: each option meets each precision or regularizer at least once.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

# name, model ("llama" | "bert"), config leaves, tolerance on the losses (fp32: 1e-5; bf16 rounds differently
# under FSDP's mixed-precision policy than under autocast alone)
COMBOS = [
    ("full-fp32-eval", "llama", dict(grad_accum=2, eval_every=1), 1e-5),
    ("chunked-fp32-l2sp", "llama", dict(loss="chunked", l2sp=0.5, drift_every=1), 1e-5),
    ("inbackward-chunked-fp32-drift-clip", "llama", dict(optimizer_in_backward=True, loss="chunked",
                                                         drift_every=1, grad_clip=0.05), 1e-5),
    ("packing-checkpointing-fp32-ewc", "llama", dict(packing=True, activation_checkpointing=True, ewc=0.5,
                                                      ewc_batches=4), 1e-5),
    # (mixing with packing fails on one device too: collate.py's packed collator gets general rows without
    # position_ids; not a sharding matter)
    ("mix-fp32-l2sp-cpu-anchor-retention", "llama", dict(mix_fraction=0.25, l2sp=0.5, l2sp_anchor="cpu",
                                                          retention_eval=True), 1e-5),
    ("classifier-fp32-l2sp-eval", "bert", dict(l2sp=0.5, eval_every=1, grad_accum=2), 1e-5),
    ("bf16mixed-full-l2sp", "llama", dict(precision="bf16-mixed", l2sp=0.5, grad_accum=2), 3e-2),
    ("bf16-largest-minus-compile", "llama", dict(precision="bf16", optimizer_in_backward=True,
                                                 activation_checkpointing=True, offload_activations=True,
                                                 loss="chunked"), 3e-2),
]
RESHARD = "full-fp32-eval"     # its step-1 checkpoint is also kept for a resume on one rank (the test does it)


def config(name: str, model: str, leaves: dict, models: dict, out: Path, *, ranks: int):
    from test_trainer import lm_config

    base = dict(max_steps=2, batch_size=2, log_every=1, eval_every=0, checkpoint_every=0, lr=5e-3,
                run_name=name if ranks > 1 else f"{name}-single", memory_snapshot_every=1000)
    base.update(leaves)
    if ranks == 1:   # one device accumulates what the ranks read side by side
        if base.get("optimizer_in_backward"):   # no accumulation there: one batch of both ranks' rows
            base["batch_size"] *= 2
            base["group_by_length"] = False     # length-grouped batches depend on the batch size
        else:
            base["grad_accum"] = base.get("grad_accum", 1) * 2
    else:
        base["gpus"] = [0, 1]
        if base.get("optimizer_in_backward"):
            base["group_by_length"] = False
    if model == "bert":
        base.update(task="classification", val_fraction=0.25)
    return lm_config(models[model], models[f"{model}_data"], out, **base)


def summary(events, run_dir: Path) -> dict:
    from ftstudio.core.events import DriftMetrics, EvalMetrics, LogLine, RetentionMetrics, RunFailed, RunFinished, StepMetrics

    end = next((e for e in events if isinstance(e, (RunFinished, RunFailed))), None)
    return {"end": type(end).__name__, "status": getattr(end, "status", None), "reason": getattr(end, "reason", None),
            "losses": {e.step: e.loss for e in events if isinstance(e, StepMetrics)},
            "evals": [[e.step, e.loss, e.accuracy] for e in events if isinstance(e, EvalMetrics)],
            "drift": [[e.step, e.total] for e in events if isinstance(e, DriftMetrics)],
            "retention": [[e.step, e.loss] for e in events if isinstance(e, RetentionMetrics)],
            "errors": [e.message[-1500:] for e in events if isinstance(e, LogLine) and e.level == "error"],
            "run_dir": str(run_dir)}


class StopAfter:
    """A Control that asks for a stop once step ``n`` was reported on this rank (every rank reports its steps,
    so all ranks stop at the same step, as SyncedControl makes them do in a real run)."""

    def __new__(cls, events, n):
        from ftstudio.core.control import Control
        from ftstudio.core.events import StepMetrics

        class _Stop(Control):
            @property
            def stop_requested(self) -> bool:
                return any(isinstance(e, StepMetrics) and e.step >= n for e in events)
        return _Stop()


def main() -> int:
    import torch.distributed as dist

    from ftstudio.engine.distributed.fsdp import FSDPTrainer
    from ftstudio.engine.train import Trainer

    models, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    if os.environ.get("FSDP_MATRIX_ONLY"):   # debugging one combination: FSDP_MATRIX_ONLY=name
        COMBOS[:] = [c for c in COMBOS if c[0] == os.environ["FSDP_MATRIX_ONLY"]]
        import faulthandler
        faulthandler.dump_traceback_later(40, exit=True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t0 = time.perf_counter()
    singles = {}
    # The references run on rank 0: transformers' save_pretrained writes no weights on a process whose torch.distributed
    # rank is not 0, and the weights are compared.
    for name, model, leaves, _ in COMBOS:
        if rank == 0:
            cfg = config(name, model, leaves, models, out / "single", ranks=1)
            events = []
            Trainer(cfg, events.append).run()
            singles[name] = summary(events, out / "single" / cfg.train.run_name)
    parts = [None] * world
    dist.all_gather_object(parts, singles)
    t_single = time.perf_counter() - t0
    results = {}
    for name, model, leaves, _ in COMBOS:
        cfg = config(name, model, leaves, models, out / "fsdp", ranks=2)
        run_dir = out / "fsdp" / name
        first = []
        end = FSDPTrainer(cfg, first.append, StopAfter(first, 1)).run()
        if type(end).__name__ == "RunFailed":   # another rank may now wait on a collective: say why at once
            print(f"[rank {rank}] {name}: {end.reason}", summary(first, run_dir)["errors"], file=sys.stderr, flush=True)
        if name == RESHARD and rank == 0:
            shutil.copytree(run_dir, out / "reshard")
        dist.barrier()
        second = []
        FSDPTrainer(cfg, second.append, None, resume_from=run_dir).run()
        state = {}
        if rank == 0:
            import torch
            ckpt = run_dir / "checkpoints" / "step-1" / "trainer_state.pt"
            if ckpt.exists():
                state = torch.load(ckpt, weights_only=True)["extra"]
        results[name] = {"first": summary(first, run_dir), "resumed": summary(second, run_dir),
                         "single": next(p[name] for p in parts if name in p), "extra": state}
    if rank == 0:
        (out / "results.json").write_text(json.dumps({"results": results, "single_s": t_single,
                                                      "total_s": time.perf_counter() - t0}, default=str))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)   # as the real ranks do (distributed/fsdp.py): no interpreter teardown racing gloo's threads


if __name__ == "__main__":
    sys.exit(main())
