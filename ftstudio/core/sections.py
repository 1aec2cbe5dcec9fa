"""The sections of a RunConfig: one dataclass each (model, data, train, optim, schedule, memory, regularize, eval,
checkpoint, hardware), each field with its docstring right under it (the GUI's tooltip and the flag's help) and
its checks in ``__post_init__``; the allowed values of every choice field. ``config.py`` assembles them.

Pure Python: importing this module imports neither torch nor Qt.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

TASKS = ("auto", "causal-lm", "classification")
FORMATS = ("auto", "text", "prompt-completion", "alpaca", "chat", "sharegpt", "classification", "preference")
SCHEDULES = ("cosine", "constant", "linear")
PRECISIONS = ("auto", "bf16-mixed", "fp16-mixed", "bf16", "fp32")
OPTIMIZERS = ("adamw", "adamw8bit", "adamw4bit", "adafactor", "sgd")
BF16_ROUNDINGS = ("stochastic", "kahan")
LOSSES = ("full", "chunked")
FP8_MODES = ("off", "auto", "tensorwise", "rowwise")
NONFINITE_POLICIES = ("skip", "stop", "rollback")
ANCHOR_PLACES = ("gpu", "bf16", "cpu")
ATTENTIONS = ("auto", "sdpa", "flex_attention", "eager")
TRACKERS = ("tensorboard", "wandb", "mlflow")
REPORT_MODEL = ("small", "all", "none")
INSTRUCTION_FORMATS = ("auto", "chat-template", "text")
EXPORT_DTYPES = ("auto", "float32", "bfloat16", "float16")
METRICS = ("loss", "accuracy", "macro_f1")
METHODS = ("sft", "dpo", "simpo")
DPO_REFERENCES = ("auto", "precompute", "model")
# Leaf name → allowed values: the CLI's argparse choices and the GUI's combo boxes both read this.
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "task": TASKS, "format": FORMATS, "schedule": SCHEDULES, "precision": PRECISIONS, "optimizer": OPTIMIZERS,
    "bf16_rounding": BF16_ROUNDINGS, "loss": LOSSES, "nonfinite": NONFINITE_POLICIES, "l2sp_anchor": ANCHOR_PLACES,
    "attention": ATTENTIONS, "metric": METRICS, "instruction_format": INSTRUCTION_FORMATS,
    "export_dtype": EXPORT_DTYPES, "report_model": REPORT_MODEL, "method": METHODS, "dpo_reference": DPO_REFERENCES,
    "fp8": FP8_MODES,
}


def _check_choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}", f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _check_range(section: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
                 *, lo_open: bool = False, integer: bool = False, allow_none: bool = False) -> None:
    path = f"{section}.{name}"
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"{value!r} is not a number")
    if integer and not float(value).is_integer():
        raise ConfigError(path, f"{value!r} is not a whole number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"{value!r} is not finite")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(path, f"{value!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(path, f"{value!r} must be <= {hi}")


def report_targets(value: Any) -> list[str]:
    """The tracker names in ``train.report_to`` ("tensorboard,wandb" → ["tensorboard", "wandb"]; "none" → [])."""
    if not isinstance(value, str):
        raise ConfigError("train.report_to", f"{value!r} must be text such as 'tensorboard,wandb' or 'none'")
    names = [n.strip().lower() for n in value.replace(" ", ",").split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    for name in names:
        if name not in TRACKERS:
            raise ConfigError("train.report_to", f"{name!r} is not one of {', '.join(TRACKERS)} (or none)")
    return list(dict.fromkeys(names))


@dataclass
class ModelConfig:
    source: str = "demo"
    """The model to fine-tune: "demo" (bundled all-MiniLM-L6-v2), a local Hugging Face folder, a .gguf file, or a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"."""
    task: str = "auto"
    """What to train: "causal-lm" (next-token prediction), "classification" (a sequence classifier), or "auto" to decide from the model and the data."""
    trust_remote_code: bool = False
    """Run Python code shipped with a hub model. Off by default: only turn on for models you trust."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when the source is a hub id; None for the default branch."""
    attention: str = "auto"
    """Attention kernel: "sdpa" (PyTorch's fused attention), "flex_attention" (block-sparse document masks for packed rows), "eager", or "auto": on one CUDA GPU, packed causal-LM rows get flex_attention's per-document masks where a batch has document boundaries and cuDNN's causal kernel where it has none; unpacked rows that (nearly all) fill seq_len get SDPA with cuDNN's kernel first (faster than flash on Hopper; it plans each new length anew, so rows of varying length keep SDPA's own choice); else the model's default (sdpa)."""

    def __post_init__(self) -> None:
        _check_choice("model", "task", self.task, TASKS)
        _check_choice("model", "attention", self.attention, ATTENTIONS)
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError("model.source", "must name a model: 'demo', a folder, a .gguf file or a hub id")


@dataclass
class DataConfig:
    dataset: str = "demo"
    """The training data: "demo" (bundled legal clauses), a .jsonl/.json/.csv/.tsv/.parquet/.txt file, a folder saved by datasets, or a hub id."""
    format: str = "auto"
    """Row format: text, prompt-completion, alpaca, chat (OpenAI messages), sharegpt, classification, preference (prompt / chosen / rejected, for train.method dpo or simpo), or "auto" to detect it."""
    text_column: str | None = None
    """Column holding the text for "text" and "classification" formats; None picks "text" (or the only string column)."""
    label_column: str | None = None
    """Column holding the class label for classification; None picks "label"."""
    instruction_format: str = "auto"
    """How alpaca and prompt/completion rows reach a causal LM: "chat-template" renders them as a user turn (instruction + input, or the prompt) and an assistant turn through the model's chat template, so the model learns the format it is used with; "text" uses the Stanford Alpaca prompt (alpaca) or prompt + completion as plain text, ending with EOS; "auto" picks chat-template when the tokenizer has a chat template, else text."""
    seq_len: int = 256
    """Tokens per example; longer rows are truncated, shorter ones padded (or packed)."""
    packing: bool = False
    """Concatenate examples into full seq_len rows instead of padding (causal LM only); attention never crosses examples."""
    group_by_length: bool = True
    """Length-grouped batches for padded rows (causal LM and classifier): each batch holds training rows of similar length, so little padding is computed; the rows are shuffled, cut into megabatches of 50 batches sorted by length, and the batches are shuffled (seeded: the same seed gives the same order, a resume continues at the same row). Off: a plain shuffle. Packed rows and data mixing use the plain shuffle; the run's log says which and the padding saved."""
    val_fraction: float = 0.1
    """Fraction of rows held out for evaluation (a seeded split); 0 turns evaluation off."""
    val_dataset: str | None = None
    """A separate validation file; when given, val_fraction is ignored."""
    max_rows: int | None = None
    """Use at most this many rows (handy for a quick trial); None uses all."""

    def __post_init__(self) -> None:
        _check_choice("data", "format", self.format, FORMATS)
        _check_choice("data", "instruction_format", self.instruction_format, INSTRUCTION_FORMATS)
        _check_range("data", "seq_len", self.seq_len, 8, 1_048_576, integer=True)
        _check_range("data", "val_fraction", self.val_fraction, 0.0, 0.9)
        _check_range("data", "max_rows", self.max_rows, 1, integer=True, allow_none=True)
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ConfigError("data.dataset", "must name a dataset: 'demo', a file, a folder or a hub id")


@dataclass
class TrainConfig:
    epochs: float = 2.0
    """Passes over the training data (fractions allowed); ignored when max_steps is set. 1–3 is usual: each extra epoch moves further from θ0."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; None trains for `epochs`."""
    batch_size: int = 16
    """Examples per micro-batch on each device."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed before each optimizer step (effective batch = batch_size × grad_accum × GPUs)."""
    seed: int = 42
    """Seed for weights of new heads, the data split and the shuffle order: the same seed gives the same run."""
    output: str = "runs"
    """Folder under which each run gets its own subfolder (config.yaml, metrics.jsonl, checkpoints/, final/)."""
    run_name: str | None = None
    """Name of the run's folder; None makes one from the date and the model."""
    nonfinite: str = "skip"
    """What to do on a NaN/inf loss or gradient: "skip" the step (up to max_skips times), "stop", or "rollback" to the last checkpoint with half the LR."""
    max_skips: int = 5
    """How many non-finite steps "skip" tolerates before the run stops."""
    log_every: int = 1
    """Report step metrics every N optimizer steps (reading the loss syncs the GPU)."""
    report_to: str = "none"
    """Experiment trackers that also receive the run's metrics, comma-separated: "tensorboard" (event files in the run folder), "wandb" (offline unless you are logged in), "mlflow" (a SQLite store in the run folder unless MLFLOW_TRACKING_URI is set), or "none". Each is an optional extra: pip install "ftstudio[tensorboard]"."""
    report_model: str = "small"
    """What the trackers keep of the final model as an artifact: "small" (its model card, config and tokenizer files), "all" (also the weights), or "none"."""
    method: str = "sft"
    """The objective: "sft" (next-token loss on the completions: demonstrations), "dpo" (Direct Preference Optimization on prompt / chosen / rejected pairs, against the frozen starting weights θ0 as reference; usually run on a model after SFT), or "simpo" (SimPO: reference-free, length-normalised log-probabilities with a margin simpo_gamma; no reference cost). dpo and simpo need preference data."""
    dpo_beta: float = 0.1
    """β of DPO and SimPO: how strongly the policy is held to its reference (DPO: 0.1 is usual, smaller moves further from θ0); SimPO scales its length-normalised log-probabilities by β (the SimPO paper uses 2 to 2.5)."""
    dpo_label_smoothing: float = 0.0
    """Conservative DPO (cDPO): the share of pairs assumed to be labelled the wrong way round, loss −(1−ε)·log σ(βh) − ε·log σ(−βh) (0 = plain DPO, as TRL's sigmoid loss; 0.1 tolerates noisy preferences). Below 0.5."""
    dpo_reference: str = "auto"
    """Where DPO's reference log-probabilities come from: "precompute" (θ0 scores every pair once before training and the values are kept per row in the run folder: no second model in memory while training, resume reads them back), "model" (a frozen copy of θ0 on the device scores each batch: one more copy of the weights in the training dtype), or "auto" (precompute: it never costs more memory and never more forwards). `ftstudio estimate` shows both costs."""
    simpo_gamma: float = 0.5
    """SimPO's target reward margin γ: the chosen answer's scaled log-probability must beat the rejected one's by γ (0.5 to 1.5 in the SimPO paper)."""

    def __post_init__(self) -> None:
        _check_range("train", "epochs", self.epochs, 0.0, 10_000, lo_open=True)
        _check_range("train", "max_steps", self.max_steps, 1, integer=True, allow_none=True)
        _check_range("train", "batch_size", self.batch_size, 1, 65_536, integer=True)
        _check_range("train", "grad_accum", self.grad_accum, 1, 65_536, integer=True)
        _check_range("train", "seed", self.seed, 0, 2**32 - 1, integer=True)
        _check_choice("train", "nonfinite", self.nonfinite, NONFINITE_POLICIES)
        _check_range("train", "max_skips", self.max_skips, 0, integer=True)
        _check_range("train", "log_every", self.log_every, 1, integer=True)
        report_targets(self.report_to)
        _check_choice("train", "report_model", self.report_model, REPORT_MODEL)
        _check_choice("train", "method", self.method, METHODS)
        _check_choice("train", "dpo_reference", self.dpo_reference, DPO_REFERENCES)
        _check_range("train", "dpo_beta", self.dpo_beta, 0.0, 1000.0, lo_open=True)
        _check_range("train", "dpo_label_smoothing", self.dpo_label_smoothing, 0.0, 0.49)
        _check_range("train", "simpo_gamma", self.simpo_gamma, 0.0, 100.0)
        _check_run_name(self.run_name)
        if not self.output.strip():
            raise ConfigError("train.output", "must name a folder, e.g. 'runs'")


def _check_run_name(name: str | None) -> None:
    """A run name is one folder name inside train.output: never a path that leaves it."""
    if name is None:
        return
    bad = next((c for c in name if c in '/\\:' or ord(c) < 32), None)
    if not name.strip() or name.strip() in (".", "..") or bad is not None or len(name) > 200:
        why = (f"contains {bad!r}" if bad is not None else "is too long" if len(name) > 200
               else "is not a folder name")
        raise ConfigError("train.run_name", f"{name!r} {why}: a run name is one folder name inside train.output "
                                            "(letters, digits, spaces, - _ .), never a path")


@dataclass
class OptimConfig:
    optimizer: str = "adamw"
    """Optimizer: adamw (fused on CUDA; for bf16 weights, our AdamW that keeps small updates, see bf16_rounding), adamw8bit (FT Studio's FP8-state AdamW, ~2 bytes of state per parameter; torchao's or bitsandbytes' where it cannot run), adamw4bit (torchao, ~1 byte), adafactor, or sgd (with momentum)."""
    lr: float = 5e-5
    """Peak learning rate. Fine-tuning wants 1e-5 to 5e-5: small steps stay near the pre-trained weights."""
    weight_decay: float = 0.01
    """Decoupled (AdamW) weight decay, not applied to biases and norms. It shrinks weights toward zero, not toward θ0 (see l2sp)."""
    beta1: float = 0.9
    """Adam's first-moment decay (momentum for sgd)."""
    beta2: float = 0.999
    """Adam's second-moment decay."""
    eps: float = 1e-8
    """Adam's epsilon, added to the denominator for stability."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    layer_lr_decay: float = 1.0
    """ULMFiT discriminative rates: layer l from the top trains at lr·ξ^-l. 1 = off; 2.6 is ULMFiT's value."""
    bf16_rounding: str = "stochastic"
    """How AdamW writes updates into bf16 weights (precision bf16): "stochastic" rounds up or down at random, unbiased, no extra memory; "kahan" keeps what rounding dropped in a bf16 buffer (+2 bytes/param) and adds it back later, but the weights the model computes with lag by up to half a bf16 step, which slows the first steps of a low-LR fine-tune."""

    def __post_init__(self) -> None:
        _check_choice("optim", "optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("optim", "bf16_rounding", self.bf16_rounding, BF16_ROUNDINGS)
        _check_range("optim", "lr", self.lr, 0.0, 1.0, lo_open=True)
        _check_range("optim", "weight_decay", self.weight_decay, 0.0, 10.0)
        _check_range("optim", "beta1", self.beta1, 0.0, 0.999999)
        _check_range("optim", "beta2", self.beta2, 0.0, 0.999999)
        _check_range("optim", "eps", self.eps, 0.0, 1.0, lo_open=True)
        _check_range("optim", "grad_clip", self.grad_clip, 0.0)
        _check_range("optim", "layer_lr_decay", self.layer_lr_decay, 1.0, 100.0)


@dataclass
class ScheduleConfig:
    schedule: str = "cosine"
    """Learning-rate schedule: "cosine" (linear warmup, cosine decay to the floor), "constant" (warmup, then hold), "linear" (warmup, linear decay to the floor)."""
    warmup_ratio: float = 0.05
    """Fraction of all steps spent ramping the LR linearly up to the peak (3–10 % is usual): with W warmup steps, the first step runs at peak/W, step W at the peak."""
    warmup_steps: int | None = None
    """Warmup length in steps; overrides warmup_ratio when set."""
    min_lr_ratio: float = 0.0
    """The floor that cosine and linear decay reach at the end, as a fraction of the peak LR."""

    def __post_init__(self) -> None:
        _check_choice("schedule", "schedule", self.schedule, SCHEDULES)
        _check_range("schedule", "warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _check_range("schedule", "warmup_steps", self.warmup_steps, 0, integer=True, allow_none=True)
        _check_range("schedule", "min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)


@dataclass
class MemoryConfig:
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of storing them (about 30 % slower, far less memory)."""
    offload_activations: bool = False
    """With activation checkpointing, keep the saved block inputs in pinned CPU memory."""
    checkpoint_blocks: int = 0
    """With activation checkpointing, how many blocks are checkpointed, from the first; the others keep their activations (faster, more memory: what the memory budget's chooser uses to fill the memory left). 0 = every block."""
    loss: str = "full"
    """"full" materialises all logits; "chunked" computes the LM head and cross-entropy in slices so the fp32 logits never exist at once."""
    compile: bool = False
    """torch.compile each transformer block (CUDA only; compiling takes seconds, training gets faster)."""
    optimizer_in_backward: bool = False
    """Apply the optimizer step to each parameter as soon as its gradient is ready, so full gradients never coexist (no grad accumulation)."""
    fp8: str = "auto"
    """FP8 training of the transformer blocks' linear layers (torchao float8, with compile, Hopper or newer): "tensorwise" or "rowwise" scaling; "auto" (the default) where it measured faster: compiled, 1 B parameters or more, an FP8 GPU, torchao installed; "off" never. The first batch's loss is checked against bf16's (FP8 undone past 2 %) and the run is told if FP8 drifts."""
    fast_defaults: bool = True
    """On one CUDA GPU, turn on what is safe for the run even where its field is off: packing (causal LM rows mostly shorter than seq_len) and compile (when the run is long enough to repay compiling); each choice is logged. CPU runs and several GPUs use the fields as written."""

    def __post_init__(self) -> None:
        _check_choice("memory", "loss", self.loss, LOSSES)
        _check_range("memory", "checkpoint_blocks", self.checkpoint_blocks, 0, integer=True)
        _check_choice("memory", "fp8", self.fp8, FP8_MODES)


@dataclass
class RegularizeConfig:
    l2sp: float = 0.0
    """L2-SP strength λ: adds λ/2·‖θ−θ0‖², pulling weights back toward the pre-trained ones. 0 = off."""
    l2sp_anchor: str = "gpu"
    """Where θ0 is kept for l2sp/ewc: "gpu" (fp32 beside the weights), "bf16" (half the bytes), or "cpu" (no GPU memory, slower)."""
    ewc: float = 0.0
    """EWC strength λ: adds λ/2·Σ F_i(θ_i−θ0_i)² with a diagonal Fisher F from the general set. 0 = off."""
    ewc_batches: int = 8
    """Batches of the general set used to estimate the Fisher diagonal for EWC."""
    mix_fraction: float = 0.0
    """Fraction of each batch drawn from general text (data mixing against forgetting); 0 = off. Causal LM only."""
    retention_data: str | None = None
    """General-text file for the retention (forgetting) evaluation and for mixing; None uses the bundled set."""
    retention_eval: bool = False
    """Measure loss and perplexity on the general set before training and at every evaluation (causal LM)."""
    drift_every: int = 0
    """Report per-layer drift ‖θ−θ0‖/‖θ0‖ every N steps; 0 = only at evaluations when a θ0 copy exists."""

    def __post_init__(self) -> None:
        _check_range("regularize", "l2sp", self.l2sp, 0.0)
        _check_choice("regularize", "l2sp_anchor", self.l2sp_anchor, ANCHOR_PLACES)
        _check_range("regularize", "ewc", self.ewc, 0.0)
        _check_range("regularize", "ewc_batches", self.ewc_batches, 1, integer=True)
        _check_range("regularize", "mix_fraction", self.mix_fraction, 0.0, 0.9)
        _check_range("regularize", "drift_every", self.drift_every, 0, integer=True)


@dataclass
class EvalConfig:
    eval_every: int = 20
    """Evaluate on the validation split every N optimizer steps (and always at the end); 0 = only at the end."""
    eval_batches: int | None = None
    """Evaluate on at most this many validation batches; None uses the whole split."""
    metric: str = "loss"
    """What "better" means for early stopping, the best model and sweeps: the validation "loss" (lower is better), or "accuracy" / "macro_f1" (higher is better; classifiers only)."""
    early_stop_patience: int = 0
    """End the run after this many evaluations in a row without an improvement of eval.metric (needs eval_every and validation rows); 0 = never stop early."""
    benchmarks: str = ""
    """lm-evaluation-harness tasks scored before the first step and after the last, e.g. "hellaswag,arc_easy" (the harness's names, or a task YAML's name in eval.benchmark_include); scores and settings go to RUN/benchmarks/. Empty = none. Needs pip install 'ftstudio[eval]'."""
    benchmark_include: str | None = None
    """A folder of task YAMLs of your own (the harness's format, over local JSONL files) for eval.benchmarks."""
    benchmark_limit: int | None = None
    """Score at most this many documents of each eval.benchmarks task (None: all of them)."""

    def __post_init__(self) -> None:
        _check_range("eval", "eval_every", self.eval_every, 0, integer=True)
        _check_range("eval", "benchmark_limit", self.benchmark_limit, 1, integer=True, allow_none=True)
        if not isinstance(self.benchmarks, str):
            raise ConfigError("eval.benchmarks", f"{self.benchmarks!r} must be text such as 'hellaswag,arc_easy'")
        _check_range("eval", "eval_batches", self.eval_batches, 1, integer=True, allow_none=True)
        _check_choice("eval", "metric", self.metric, METRICS)
        _check_range("eval", "early_stop_patience", self.early_stop_patience, 0, integer=True)


@dataclass
class CheckpointConfig:
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N optimizer steps; 0 = none (the final model is always exported)."""
    keep_last: int = 2
    """Keep only the newest K checkpoints (older ones are deleted after a new one is complete)."""
    export: bool = True
    """Write final/ with save_pretrained (safetensors) and the tokenizer at the end of the run."""
    export_dtype: str = "auto"
    """Weight dtype of final/: "auto" keeps the dtype the base model was stored in (a bf16 checkpoint trained with bf16-mixed exports bf16, half the size of fp32), or float32, bfloat16, float16."""
    export_best: bool = False
    """Export the weights of the best evaluation (by eval.metric) instead of the last ones; the best weights are copied to host memory at each improvement (one copy of the weights in RAM, checked by the memory plan). One device only."""

    def __post_init__(self) -> None:
        _check_range("checkpoint", "checkpoint_every", self.checkpoint_every, 0, integer=True)
        _check_range("checkpoint", "keep_last", self.keep_last, 1, integer=True)
        _check_choice("checkpoint", "export_dtype", self.export_dtype, EXPORT_DTYPES)
        if not isinstance(self.export_best, bool):
            raise ConfigError("checkpoint.export_best", f"{self.export_best!r} is not true or false")


@dataclass
class HardwareConfig:
    device: str = "auto"
    """Where to train: "auto" (the first GPU, else the CPU), "cpu", "cuda" or "cuda:N"."""
    gpus: list[int] = field(default_factory=list)
    """GPU indices for a multi-GPU (FSDP2) run, e.g. [0, 1]; empty = one device."""
    precision: str = "auto"
    """Numerics: bf16-mixed (fp32 master weights + bf16 autocast: the 16N recipe), fp16-mixed (with loss scaling), bf16 (pure), fp32; "auto" = bf16-mixed on GPUs that support it, fp32 on the CPU."""
    memory_snapshot_every: int = 10
    """Report measured memory (tensors, allocator, NVML) every N steps."""
    gpu_memory: float | None = None
    """GB the run's tensors may hold at once on the GPU (its peak allocated); None = the card's own memory. With the fast defaults on one GPU, a run that would not fit gets the fastest options that do (each choice logged)."""

    def __post_init__(self) -> None:
        _check_choice("hardware", "precision", self.precision, PRECISIONS)
        _check_range("hardware", "gpu_memory", self.gpu_memory, 0.0, 1e5, lo_open=True, allow_none=True)
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError("hardware.device", f"{dev!r} is not one of auto, cpu, cuda, cuda:N")
        if not isinstance(self.gpus, list) or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                      for g in self.gpus):
            raise ConfigError("hardware.gpus", f"{self.gpus!r} must be a list of GPU indices such as [0, 1]")
        if len(set(self.gpus)) != len(self.gpus):
            raise ConfigError("hardware.gpus", f"{self.gpus!r} names a GPU twice")
        _check_range("hardware", "memory_snapshot_every", self.memory_snapshot_every, 1, integer=True)


SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig,
    "schedule": ScheduleConfig, "memory": MemoryConfig, "regularize": RegularizeConfig,
    "eval": EvalConfig, "checkpoint": CheckpointConfig, "hardware": HardwareConfig,
}


# -- Types, checked before each section's own checks: a YAML string "no" is not false, 8.0 is not a batch size, an
# int is not a run name. The one leniency: a float field takes a numeric string, because PyYAML (YAML 1.1) reads
# `lr: 2e-5` (no dot in the mantissa) as the string "2e-5".
@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> tuple[tuple[str, type, bool], ...]:
    """(name, base type, None allowed) of each field of a section."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        out.append((f.name, typing.get_origin(base) or base, optional))
    return tuple(out)


def _type_error(path: str, value: Any, want: str) -> ConfigError:
    if isinstance(value, str):
        got = "text"
        hint = ("; write true or false, without quotes" if want == "true or false" else
                "; write it without quotes" if _is_number_text(value) else "")
    elif isinstance(value, bool):
        got, hint = "a boolean", "; quote it" if want == "text" else ""
    elif isinstance(value, (int, float)):
        got = "a number"
        hint = (f"; quote it: '{value}'" if want == "text" else
                f"; write {int(value)}" if want == "a whole number" and float(value).is_integer() else "")
    else:
        got = {dict: "a mapping", list: "a list"}.get(type(value), f"a {type(value).__name__}")
        hint = "; quote it" if want == "text" else ""
    return ConfigError(path, f"{value!r} is {got}, not {want}{hint}")


def _is_number_text(value: str) -> bool:
    try:
        float(value.strip())
    except ValueError:
        return False
    return True


def check_types(section: str, obj: Any) -> None:
    """Raise a ConfigError naming the field whose value has the wrong type; coerce numeric strings for floats."""
    for name, base, optional in _field_types(type(obj)):
        value = getattr(obj, name)
        path = f"{section}.{name}"
        if value is None:
            if not optional:
                raise ConfigError(path, "must be given (null is not allowed here)")
        elif base is bool:
            if not isinstance(value, bool):
                raise _type_error(path, value, "true or false")
        elif base is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(path, value, "a whole number")
        elif base is float:
            if isinstance(value, str) and _is_number_text(value):
                setattr(obj, name, float(value.strip()))
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(path, value, "a number")
        elif base is str:
            if not isinstance(value, str):
                raise _type_error(path, value, "text")


def _typed(name: str, cls: type) -> None:
    """Run check_types before the section's own __post_init__ checks."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self) -> None:
        check_types(name, self)
        if own is not None:
            own(self)
    __post_init__.__doc__ = own.__doc__ if own is not None else None
    cls.__post_init__ = __post_init__


for _name, _cls in SECTIONS.items():
    _typed(_name, _cls)
