"""The memory plan: bytes per GPU that a full fine-tuning run needs, before it starts, and what it used.

:func:`estimate` works from a config.json dict (no torch import) and follows what our training step does on
a CUDA device: fp32 master weights with bf16 autocast ("bf16-mixed"), AdamW states beside them, the tensors
each transformer block saves for its backward pass (counted per op of the Hugging Face implementation:
RMSNorm upcasts, one bf16 input copy per projection under autocast, SDPA's q/k/v/out with grouped-query
k/v, SwiGLU's gate/up/product), the bf16 weight copies autocast keeps, and the logits: batch × sequence ×
vocabulary in fp32 plus their gradient, which dominate a small model with a large vocabulary.

The peak is the largest of three moments of a step, each a sum of physical terms:
  * the loss backward (all activations saved, log-softmax output, its gradient and nll's gradient alive),
  * a block's backward (with activation checkpointing: one block recomputed while gradients accumulate),
  * the end of backward / optimizer step (weights + gradients + optimizer state + one gradient transient).
The breakdown reports weights, gradients and optimizer state at their full sizes and "activations" as
what the peak needs beyond them, so the parts always add up to the peak that a card must hold.

``measure.py`` counts the same three states from the live tensors during a run.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ftstudio.core.config import RunConfig
from ftstudio.engine.models import ModelShape, shape_from_config

GB = 1e9
CUDA_CONTEXT = 1_450_000_000   # NVML used − allocator reserved, measured on an H200 (torch 2.11, CUDA 13)
# cuBLAS's workspaces, taken from the caching allocator and kept: 32 MiB per (handle, stream) on Hopper (torch's
# default), one for the forward's thread and one for autograd's backward thread. On the H100 (torch 2.11) the memory
# allocated between steps grew by exactly 64 MiB after the first step, and the step's peak sat 34-68 MB above every
# tensor the tracker counted (tests/benchmarks/results/moe_op_workspace_h100.jsonl).
CUBLAS_WORKSPACES = 2 * 32 * 2**20
# reserved − allocated at the peak (caching-allocator blocks that cannot be reused for the next request).
# Fitted on the H200 table (tests/benchmarks/results/memory_accuracy.md): a fixed ~1.6 GB, plus 23 % of the
# loss buffers when checkpointing or pure bf16 leave memory cut into blocks too small for them.
ALLOCATOR_SLACK_BYTES = 1_600_000_000
ALLOCATOR_SLACK_LOSS = 0.23
LOSS_FULL_PER_LOGIT = 12        # fp32 log-softmax output + its gradient + nll's gradient, bytes per logit
BNB_BLOCK = 256                 # bitsandbytes 8-bit blockwise optimizer: one fp32 absmax per 256 values
# torchao's 8/4-bit AdamW dequantise one tensor's states (and upcast its weight and gradient) to update it:
# transient bytes per value of the largest tensor, from the H200 rows of "Largest model that fits"
# (Llama-3-8B / Qwen2.5-14B with 8-bit states, Qwen2.5-32B with 4-bit; tests/benchmarks/results/throughput.md).
LOWBIT_STEP_BYTES = {"adamw8bit": 5, "adamw4bit": 21}
AO4_BLOCK = 128                 # torchao AdamW4bit: one fp32 scale per 128 values (two 4-bit codes a byte)
BNB_MIN_8BIT = 4096             # bitsandbytes keeps tensors smaller than this in 32-bit state

# precision → (weight bytes, compute bytes, residual-stream bytes, autocast?)
PRECISION_BYTES = {"bf16-mixed": (4, 2, 4, True), "fp16-mixed": (4, 2, 4, True),
                   "bf16": (2, 2, 2, False), "fp32": (4, 4, 4, False)}


# Host RAM: a process with torch (CUDA) and transformers imported and a CUDA context, before any weights (RSS).
HOST_BASE = 2_500_000_000
HOST_BASE_CPU = 1_000_000_000
HOST_SHARD = 5_000_000_000      # hub checkpoints (and our export) are written in shards of at most 5 GB


def host_bytes(shape: ModelShape, run: RunConfig, gpus: int = 1, *, on_cpu: bool = False, peak: int = 0,
               shard_bytes: int | None = None) -> int:
    """Host RAM the whole run needs. A CPU run: the plan's peak itself plus the process. One GPU: the process,
    one checkpoint shard at a time (the weights load straight onto the GPU in the training dtype, and export
    writes 5 GB shards), plus what stays on the host for the whole run: offloaded block inputs (pinned), a θ0
    anchor kept on the CPU, the best-weights copy. FSDP: every rank loads the model on the host in fp32 first.
    ``shard_bytes``: the largest checkpoint file, when known (else a bf16 checkpoint in 5 GB shards)."""
    N = shape.params
    if on_cpu:
        return HOST_BASE_CPU + peak
    if gpus > 1:
        return gpus * (HOST_BASE + 4 * N)
    shard = shard_bytes if shard_bytes is not None else min(2 * N, HOST_SHARD)
    wb, _, r, _ = PRECISION_BYTES[resolve_precision(run)]
    mem, reg = run.memory, run.regularize
    kept = 0
    if mem.activation_checkpointing and mem.offload_activations:
        kept += run.train.batch_size * run.data.seq_len * shape.layers * r * shape.hidden
    if reg.l2sp_anchor == "cpu":
        copies = (1 if (reg.l2sp > 0 or reg.ewc > 0 or reg.drift_every > 0) else 0) + (1 if reg.ewc > 0 else 0)
        kept += 4 * N * copies
    if run.checkpoint.export_best:
        kept += wb * N
    return HOST_BASE + max(shard, min(wb * N, HOST_SHARD)) + kept


def chunk_tokens(vocab: int) -> int:
    """Tokens per slice of the chunked loss: the slice's fp32 logits stay near 512 MiB (shared with
    memory_loss, so the plan and the loss agree)."""
    return int(min(8192, max(128, 2**27 // max(vocab, 1))))


@dataclass
class MemoryBreakdown:
    """Bytes per GPU. ``total`` is what the card must hold (allocator peak + CUDA context + slack)."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    other: int
    anchor: int = 0                 # θ0 (and Fisher) copies kept by L2-SP / EWC
    textbook: int = 0               # the seed's 16N + s·b·d·L·12
    params: int = 0
    peak_allocated: int = 0         # torch.cuda.max_memory_allocated predicted
    peak_reserved: int = 0          # torch.cuda.max_memory_reserved predicted
    peak_phase: str = ""
    parts: dict[str, int] = field(default_factory=dict)   # the activation terms, for the curious
    host: int = 0                   # host RAM of the whole run (host_bytes): not part of ``total``
    method: str = "closed form"     # "traced" when the activations come from the model's own step (tracer/)
    margin: float = 0.0             # share of ``total`` to keep free beyond it (wider outside what was checked)
    notes: list[str] = field(default_factory=list)   # what the plan assumed, left out or could not trace

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.anchor + self.activations + self.other

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        return d


def resolve_precision(run: RunConfig, device: str | None = None) -> str:
    p = run.hardware.precision
    if p == "auto":
        return "fp32" if (device or run.hardware.device) == "cpu" else "bf16-mixed"
    return p


def _task(shape: ModelShape, run: RunConfig) -> str:
    if run.model.task != "auto":
        return run.model.task
    return "classification" if shape.is_encoder else "causal-lm"


def optimizer_bytes(shape: ModelShape, optimizer: str, wbytes: int, kahan: bool = False,
                    library: str | None = None) -> int:
    """Optimizer state as torch / FT Studio / torchao / bitsandbytes allocate it, per tensor (states share the
    weight's dtype). ``library``: who runs adamw8bit (memory.lowbit's decision): FT Studio's own quantises every
    tensor, torchao keeps plain states in the weight's dtype for a tensor it does not quantise, bitsandbytes (and
    None) fp32 ones."""
    total = 0
    for shp in shape.tensors.values():
        n = math.prod(shp)
        if optimizer == "adamw":
            total += 2 * wbytes * n + 4          # exp_avg, exp_avg_sq, and a fp32 `step` scalar tensor
            if wbytes == 2 and kahan:
                total += 2 * n                   # bf16 weights: CompensatedAdamW's Kahan buffer (optim.py)
        elif optimizer == "adamw8bit" and library == "ftstudio":   # train/fp8_state_adamw.py: every tensor quantised
            total += 2 * n + 8 * math.ceil(n / BNB_BLOCK) + 4        # two FP8 moments, two fp32 scales a block, step
        elif optimizer == "adamw8bit" and library == "torchao":
            quantised = n >= BNB_MIN_8BIT and n % BNB_BLOCK == 0
            total += 2 * n + 8 * (n // BNB_BLOCK) if quantised else 2 * wbytes * n
        elif optimizer == "adamw8bit":
            total += 2 * n + 8 * math.ceil(n / BNB_BLOCK) if n >= BNB_MIN_8BIT else 8 * n
        elif optimizer == "adamw4bit":            # torchao: 4-bit codes + a fp32 scale per 128 values
            quantised = n >= BNB_MIN_8BIT and n % AO4_BLOCK == 0
            total += n + 8 * (n // AO4_BLOCK) if quantised else 2 * wbytes * n
        elif optimizer == "adafactor":
            # torch.optim.Adafactor: factored row/column second moments for matrices, full for vectors
            total += 4 + wbytes * ((math.prod(shp[:-1]) + math.prod(shp[:-2]) * shp[-1]) if len(shp) >= 2 else n)
        elif optimizer == "sgd":
            total += wbytes * n                   # momentum buffer
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
    return total


def lowbit_for(run: RunConfig, *, probe: bool) -> str | None:
    """The library that runs the run's 8/4-bit optimizer here (memory.lowbit, the trainer's own decision), else None."""
    if run.optim.optimizer not in ("adamw8bit", "adamw4bit"):
        return None
    from ftstudio.engine.memory.lowbit import lowbit_library
    return lowbit_library(run.optim.optimizer, probe=probe).library


BENCHMARK_NOTE = ("eval.benchmarks: the harness pass is planned as a no-grad forward of {b} × {s} tokens with full "
                  "logits and their log-softmax ({gb:.2f} GB allocated); a task whose prompts run longer than "
                  "data.seq_len needs more")
FSDP_RESERVED_RATIO = 1.2  # fitted on the 2×H200 rows of tests/benchmarks/results/fsdp_scaling.md


def layer_bytes_per_token(shape: ModelShape, precision: str, seq_len: int) -> int:
    """Bytes one transformer block saves for backward, per token (see the module docstring)."""
    _, c, r, autocast = PRECISION_BYTES[precision]
    d, i, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim
    if shape.norm_bias:                               # LayerNorm: one fp32 input copy (+ mean/rstd)
        norm = 4 * d
    else:                                             # RMSNorm: fp32 input + normalised copy
        norm = 4 * d + r * d
    n_in = 3 if autocast else 1                       # autocast casts the input once per projection
    attn = (n_in * c * d                              # q/k/v projection inputs
            + c * q + 2 * c * kv + c * q              # SDPA's q, k, v, output (GQA keeps k/v small)
            + c * q)                                  # o_proj input (contiguous copy of the output)
    if not _flash_like(precision):                    # math SDPA: the softmax matrix is kept
        attn += 4 * shape.heads * seq_len + 2 * c * (q - kv)
    if shape.gated_mlp:
        mlp = (2 if autocast else 1) * c * d + 4 * c * i   # gate/up inputs; gate, silu, up, product
    else:
        gelu_saves = 4 if shape.model_type == "gpt2" else 1   # gpt2's python tanh-GELU keeps its pieces
        mlp = c * d + (1 + gelu_saves) * c * i
    drop = (2 * d if shape.dropout > 0 else 0) + (shape.heads * seq_len if shape.attn_dropout > 0
                                                  and not _flash_like(precision) else 0)
    return shape.norms_per_layer * norm + attn + mlp + drop


def compiled_layer_bytes_per_token(shape: ModelShape, precision: str) -> int:
    """Bytes a ``torch.compile``d block saves per token. Inductor recomputes the cheap pointwise work in
    backward (fp32 norm intermediates, rotary, dtype casts) and keeps what the matmuls and attention need:
    each norm's input and bf16 output, q/k/v and the attention output, the MLP's gate, up and their product
    (the down projection's input), plus per-token statistics. Fitted against the H200 rows of
    tests/benchmarks/results/throughput.md (Llama-3.2-1B mixed and pure bf16, Llama-3-8B pure bf16)."""
    _, c, r, _ = PRECISION_BYTES[precision]
    d, i, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim
    mlp = (3 if shape.gated_mlp else 2) * c * i
    return shape.norms_per_layer * (r * d + c * d + 4) + c * (2 * q + 2 * kv) + 4 * shape.heads + mlp


def fp8_saved_less(shape: ModelShape, c: int) -> int:
    """Bytes per token a compiled block with torchao's Float8Linear (train/fp8.py) saves less than in bf16: the
    inductor partition keeps the projections' inputs as their FP8 casts (1 byte) where backward needs nothing
    else of them: each norm's output (q/k/v and gate/up) and the MLP product (the down projection's). The
    attention output stays in bf16 for SDPA's backward, beside its FP8 cast for o_proj. The FP8 weights are
    recast in backward (the bf16 parameters are saved). On the Llama-3.2-1B shape this is 10 KB per token and
    block (1.3 GB at 4 × 2048); the traced step says 15 KB and one H100 run 24 KB (20.2 → 17.0 GB): errs high."""
    return shape.norms_per_layer * shape.hidden * (c - 1) + shape.intermediate * (c - 1) - shape.q_dim


def _flash_like(precision: str) -> bool:
    # flash / memory-efficient SDPA run in bf16/fp16; fp32 with grouped-query attention falls back to math
    return precision != "fp32"


def estimate(model_config: dict | ModelShape, run_config: RunConfig, gpus: int = 1,
             device: str | None = None) -> MemoryBreakdown:
    """Peak bytes per GPU of one training step of ``run_config`` for the model of ``model_config``.

    ``device``: where the run will go when the config leaves it open ("auto" on a machine without a GPU is
    "cpu": host RAM, fp32 for precision "auto", and no CUDA context)."""
    shape = model_config if isinstance(model_config, ModelShape) else shape_from_config(model_config)
    run = run_config
    gpus = max(1, int(gpus))
    precision = resolve_precision(run, device)
    wb, c, r, autocast = PRECISION_BYTES[precision]
    on_cpu = (device or run.hardware.device) == "cpu"
    b, s = run.train.batch_size, run.data.seq_len
    pairs = run.train.method != "sft"
    T = (2 if pairs else 1) * b * s   # dpo / simpo: a pair is two rows (chosen and rejected) in one forward
    N = shape.params
    d, L = shape.hidden, shape.layers
    task = _task(shape, run)

    weights = wb * N // gpus
    grads = wb * N // gpus
    opt = optimizer_bytes(shape, run.optim.optimizer, wb, kahan=run.optim.bf16_rounding == "kahan",
                          library=lowbit_for(run, probe=False)) // gpus
    reg = run.regularize
    # θ0 is kept for L2-SP, EWC and the drift monitor, EWC's Fisher beside it, at the bytes they are stored in
    # (forgetting/anchors.py: "gpu" fp32 whatever the weights' dtype, "bf16" 2 B, "cpu" in host memory).
    anchor_copies = (1 if (reg.l2sp > 0 or reg.ewc > 0 or reg.drift_every > 0) else 0) + (1 if reg.ewc > 0 else 0)
    anchor_bytes = {"gpu": 4, "bf16": 2, "cpu": 4 if on_cpu else 0}[reg.l2sp_anchor]
    anchor = anchor_copies * anchor_bytes * N // gpus
    # DPO's reference: a frozen copy of θ0 in the weights' dtype (dpo_reference "model"); precomputed log-probs
    # cost a forward pass before training (at most the evaluation phase below) and nothing during it.
    reference = wb * N // gpus if run.train.method == "dpo" and run.train.dpo_reference == "model" else 0
    anchor += reference
    largest = shape.largest_tensor()

    # bf16 weight copies: autocast caches one per matmul weight (the head's too when tied); FSDP instead
    # gathers a block or two at a time.
    n_cast = sum(math.prod(t) for n, t in shape.tensors.items() if len(t) >= 2 and not _lookup_only(n, shape))
    if gpus > 1:
        lp = shape.layer_params()
        cache_fwd = cache_bwd = 2 * c * lp + 4 * lp + c * shape.vocab * d
    elif autocast:
        cache_fwd = c * n_cast
        cache_bwd = c * n_cast if not run.memory.activation_checkpointing else c * shape.vocab * d
    else:
        cache_fwd = cache_bwd = 0

    # Under FSDP's mixed-precision policy the blocks compute on bf16 parameters: the residual stream is bf16
    # and autocast makes no input copies, so activations are those of pure bf16 (measured on 2×H200).
    fsdp_mixed = gpus > 1 and autocast
    # The trainer compiles each block on CUDA, then FSDP shards it (several GPUs too); the compiled per-token
    # figure was measured on one GPU: under FSDP it is not calibrated yet.
    compiled = run.memory.compile and not on_cpu
    act_precision = "bf16" if fsdp_mixed else precision
    if compiled:
        per_layer = compiled_layer_bytes_per_token(shape, act_precision)
    else:
        per_layer = layer_bytes_per_token(shape, act_precision, s)
    if fsdp_mixed:
        r = 2
    if compiled and run.memory.fp8 in ("tensorwise", "rowwise"):
        per_layer -= fp8_saved_less(shape, c)
    ckpt = run.memory.activation_checkpointing
    saved_per_layer = (0 if run.memory.offload_activations else r * d) if ckpt else per_layer
    k = min(L, run.memory.checkpoint_blocks or L) if ckpt else L   # the blocks checkpointed (the first k)
    layers_act = T * (k * saved_per_layer + (L - k) * per_layer)
    head_act = T * ((4 * d + r * d) + c * d) + T * (16 + 8 * shape.head_dim)   # final norm, head input, ids, rope
    if task == "causal-lm":
        V = shape.vocab
        if run.memory.loss == "chunked":
            ct = min(T, chunk_tokens(V))
            # the slices' checkpoints keep the final hidden states; backward adds their gradient
            # and one slice's logits (cast, fp32 copy, log-softmax, gradients)
            loss_fwd, loss_bwd = T * r * d, 2 * T * r * d + ct * V * (c + LOSS_FULL_PER_LOGIT)
        elif compiled:    # head + loss compiled (speed.compiled_cross_entropy): bf16 logits, then their gradient
            loss_fwd, loss_bwd = T * V * c, 2 * T * V * c
        else:
            loss_fwd, loss_bwd = T * V * (c + 8), T * V * LOSS_FULL_PER_LOGIT
    else:
        loss_fwd = loss_bwd = T * 4 * d
    if task == "causal-lm":
        eval_loss = (min(T, chunk_tokens(shape.vocab)) if run.memory.loss == "chunked" else T) * shape.vocab * (c + 8)
    else:
        eval_loss = loss_fwd
    # Later micro-batches of an accumulation run forward while the summed gradients exist.
    g_live = grads if run.train.grad_accum > 1 else 0
    if run.memory.optimizer_in_backward:
        g_live, grads_end = 0, wb * largest
    else:
        grads_end = grads
    states = weights + opt + anchor

    grad_work = T * (3 * r * d + 2 * c * shape.intermediate)     # gradients in flight through a block
    phases = {
        "loss forward": states + g_live + cache_fwd + layers_act + head_act + loss_fwd,
        "loss backward": states + g_live + cache_bwd + layers_act + head_act + loss_bwd,
        # without checkpointing: the top block, everything still saved, only the head's gradient made;
        # with it: the bottom block recomputed (its bf16 weight casts too) while the gradients are complete.
        "block backward": states + grad_work + (
            grads_end + T * per_layer + (c * shape.layer_params() if autocast else 0) if ckpt
            else g_live + cache_bwd + layers_act + wb * shape.vocab * d // gpus),
        "optimizer step": states + grads_end + (wb + c + LOWBIT_STEP_BYTES.get(run.optim.optimizer, 0)) * largest
        + (grads_end if run.optim.optimizer == "adafactor" else 0),
        # No gradients (freed after the step), nothing saved for backward: one block's tensors at a time and
        # the loss on the same path as training (a chunked run evaluates by slices too).
        "evaluation": states + cache_fwd + T * per_layer + head_act + eval_loss,
    }
    if not (run.data.val_dataset or run.data.val_fraction > 0):
        # a run without validation rows never evaluates (as in traced.py): its full-logit evaluation pass, 10.5 GB
        # for Llama-3.2-1B at 4 × 2048, made the checkpointed step look 70 % larger than measured (issue 33)
        eval_pass = phases.pop("evaluation")
    else:
        eval_pass = phases["evaluation"]
    notes = []
    if task == "causal-lm" and run.eval.benchmarks.strip() and gpus == 1:
        # eval.benchmarks (before the first step, after the last): lm-evaluation-harness's no-grad forward of a
        # batch of train.batch_size requests, planned at data.seq_len, with full logits and their log-softmax
        # (the harness never chunks them); the optimizer state is there at the end of the run.
        th = b * s
        phases["benchmarks"] = (states + cache_fwd + th * per_layer + th * (4 * d + r * d + c * d + 16 + 8 * shape.head_dim)
                                + th * shape.vocab * (c + 8))
        notes.append(BENCHMARK_NOTE.format(b=b, s=s, gb=phases["benchmarks"] / 1e9))
    phase = max(phases, key=phases.get)
    peak = phases[phase]
    if on_cpu:
        other, reserved = 0, peak
    else:
        loss_buffers = max(loss_fwd, loss_bwd) if (ckpt or precision == "bf16") else 0
        reserved = int(peak + min(ALLOCATOR_SLACK_BYTES, 0.1 * peak) + ALLOCATOR_SLACK_LOSS * loss_buffers)
        if gpus > 1:  # FSDP's all-gather/reduce-scatter buffers fragment the cache: reserved ran 12–25 % above
            reserved = max(reserved, int(peak * FSDP_RESERVED_RATIO))
        other = CUDA_CONTEXT + reserved - peak
    # With the step inside backward only one tensor's gradient exists at a time: the bar shows that, not N.
    shown_grads = grads_end if run.memory.optimizer_in_backward else grads
    activations = max(0, peak - (weights + shown_grads + opt + anchor))
    textbook = 16 * N + s * b * d * L * 12
    parts = {"layers": layers_act, "head": head_act, "loss": max(loss_fwd, loss_bwd),
             "weight_copies": max(cache_fwd, cache_bwd), "per_layer_per_token": per_layer, "reference": reference}
    parts.update({f"phase:{k}": v for k, v in phases.items()}, eval_pass=eval_pass)   # traced.py's benchmarks
    return MemoryBreakdown(weights=weights, gradients=shown_grads, optimizer=opt, activations=activations,
                           other=other, anchor=anchor, textbook=textbook, params=N, peak_allocated=peak,
                           peak_reserved=reserved, peak_phase=phase, parts=parts,
                           host=host_bytes(shape, run, gpus, on_cpu=on_cpu, peak=peak), notes=notes)


def _lookup_only(name: str, shape: ModelShape) -> bool:
    """Embedding tables read by index (no matmul, so autocast never casts them) unless tied to the head."""
    if "position" in name or "wpe" in name or "token_type" in name:
        return True
    if ("embed" in name or "wte" in name) and not shape.tied:
        return True
    return False


def textbook_bytes(params: float, hidden: int, layers: int, seq_len: int, batch_size: int, k: int = 12) -> int:
    """The seed's figure: 16N (fp16 weights + grads, fp32 master + two moments) + s·b·d·L·k."""
    return int(16 * params + seq_len * batch_size * hidden * layers * k)
