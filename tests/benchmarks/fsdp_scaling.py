"""FSDP2 scaling on H200s: tokens/s on one GPU against two, and each GPU's peak against the memory plan.

Random-weight Llama shapes from their public configs (no weights, no `datasets` on the device: synthetic
token rows). One GPU runs the single-device path of engine/trainer.py (fp32 master weights on the device,
bf16 autocast, fused AdamW from engine.optim, engine.memory_loss's loss, clipping); several GPUs run the same
step on a model sharded by engine.distributed.shard_model (fully_shard per block then the root, bf16 gather,
fp32 gradient reduction, fp32 sharded master weights and AdamW state) with the loss averaged over ranks as
FSDPTrainer does. Each rank reads its own rows: tokens/s counts all ranks.

    python tests/benchmarks/fsdp_scaling.py single llama3.2-3b:2x2048 ...
    torchrun --standalone --nproc-per-node 2 tests/benchmarks/fsdp_scaling.py fsdp llama3.2-3b:2x2048 ...

Each MODEL:BATCHxSEQ[:ac] prints one JSON line (rank 0) with the measured and planned bytes per GPU.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch

CONFIGS = {   # the public shapes, as in shared/bench/hf_trainer_anchor.py
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),   # CPU smoke test
}
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
WARM, STEPS = 3, 8


def build(name: str, world: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftstudio.engine.train.numerics import pick_numerics

    cfg = LlamaConfig(max_position_embeddings=8192, **CONFIGS[name])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)   # the same random model on every rank
    with torch.device(DEV):
        model = LlamaForCausalLM(cfg).float()
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        from ftstudio.engine.distributed.fsdp import shard_model
        shard_model(model, pick_numerics("bf16-mixed" if CUDA else "fp32", DEV), init_device_mesh(DEV, (world,)))
    return model, cfg


def plan(name: str, b: int, s: int, ac: bool, world: int):
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.memory import estimate

    conf = dict(CONFIGS[name], model_type="llama", max_position_embeddings=8192)
    run = RunConfig().replace(device="cuda", precision="bf16-mixed", batch_size=b, seq_len=s,
                              activation_checkpointing=ac)
    return estimate(conf, run, world)


def measure(model, opt, name: str, b: int, s: int, ac: bool, world: int, rank: int) -> dict:
    import torch.distributed as dist

    from ftstudio.engine.train.loss import causal_lm_loss

    if ac:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1000 + rank)   # each rank its own rows
    data = torch.randint(0, vocab, (WARM + STEPS, b, s), generator=g)
    params = list(model.parameters())
    times = []
    for i in range(WARM + STEPS):
        if i == WARM and CUDA:
            torch.cuda.reset_peak_memory_stats()
        x = data[i].to(DEV, non_blocking=True)
        _sync()
        t = time.perf_counter()
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=CUDA):
            loss = causal_lm_loss(model, {"input_ids": x, "labels": x}, chunked=False)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if world > 1:   # as FSDPTrainer._reduce_loss
            dist.all_reduce(loss.detach().clone(), op=dist.ReduceOp.SUM)
        _sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times[WARM:])
    p = plan(name, b, s, ac, world)
    peak = torch.cuda.max_memory_allocated() if CUDA else 1
    res = dict(model=name, gpus=world, batch=b, seq=s, activation_checkpointing=ac,
               step_s=round(step_s, 4), tokens_per_s=round(world * b * s / step_s),
               loss=round(float(loss), 3), peak_allocated_gb=round(peak / 1e9, 2),
               peak_reserved_gb=round(torch.cuda.max_memory_reserved() / 1e9, 2) if CUDA else None,
               plan_allocated_gb=round(p.peak_allocated / 1e9, 2), plan_reserved_gb=round(p.peak_reserved / 1e9, 2),
               plan_error_pct=round(100 * (p.peak_allocated - peak) / peak, 1), plan_phase=p.peak_phase,
               first_step_s=round(times[0], 2))
    if world > 1:   # every GPU's own peak: FSDP should balance them
        peaks = [None] * world
        dist.all_gather_object(peaks, round(peak / 1e9, 2))
        res["peak_allocated_gb_per_rank"] = peaks
    return res


def _empty_cache() -> None:
    import gc
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def main(argv: list[str]) -> int:
    from ftstudio.core.config import OptimConfig
    from ftstudio.engine.train.optim import build_optimizer

    mode, specs = argv[0], argv[1:]
    world, rank = 1, 0
    if mode == "fsdp":
        import torch.distributed as dist
        local = int(os.environ["LOCAL_RANK"])
        if CUDA:
            torch.cuda.set_device(local)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        else:
            dist.init_process_group("gloo")
        world, rank = dist.get_world_size(), dist.get_rank()
    built = None   # (name, model, optimizer): reused across batch shapes of one model
    for spec in specs:
        parts = spec.split(":")
        name, (b, s), ac = parts[0], map(int, parts[1].split("x")), parts[2:] == ["ac"]
        try:
            if built is None or built[0] != name:
                built = None   # the last model's memory goes before the next one is built
                _empty_cache()
                model, _ = build(name, world)
                built = (name, model, build_optimizer(model, OptimConfig(lr=1e-5), device_type=DEV))
                del model
            res = measure(built[1], built[2], name, b, s, ac, world, rank)
        except torch.OutOfMemoryError as e:
            res = dict(model=name, gpus=world, batch=b, seq=s, activation_checkpointing=ac,
                       error=f"out of memory: {str(e).splitlines()[0][:160]}",
                       plan_allocated_gb=round(plan(name, b, s, ac, world).peak_allocated / 1e9, 2))
            built = None
            _empty_cache()
        if rank == 0:
            print(json.dumps(res), flush=True)
    if mode == "fsdp":
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
