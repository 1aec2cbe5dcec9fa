"""The memory plan against the allocator's peak of real runs of the trainer (`ftstudio train`'s engine), on a GPU.

    PYTHONUNBUFFERED=1 python tests/benchmarks/plan_vs_measured.py [--shapes a,b] [--settings defaults,fastest,largest]
        [--steps 3] [--out table.md] [--jsonl rows.jsonl]
        [--plan-only [--measured RAW.jsonl,...] [--gpu-machine] [--leaked-before]]

Each shape is a random-weight model of a public architecture's config (saved in bf16 with save_pretrained, with
the word-level test tokenizer of tests/tiny.py), trained for a few steps on rows that fill seq_len, through
``ftstudio.engine.run`` (what ``ftstudio train`` calls) with a memory snapshot every step. The plan is
``train.plan_run.plan_run`` of the same config (what ``ftstudio estimate`` prints): its allocator peak against
the largest ``allocated_peak`` of the run's snapshots. Error = (planned − measured) / measured: negative is an
under-plan. ``--plan-only`` prints the plans (CPU, no run); with ``--measured`` it sets each plan beside the
measured peak of the same shape and setting in earlier raw rows (a later file's row wins), and ``--gpu-machine``
lets the fast defaults decide as on a GPU machine with triton (compile), so today's planner is checked on the CPU
against peaks measured before.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# Public configs (the fields that set the memory); (config, batch, seq_len).
SHAPES = {
    "smollm2-135m": (dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                          max_position_embeddings=8192), 16, 1024),
    "llama-3.2-1b": (dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                          num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
                          max_position_embeddings=8192, rope_scaling=None), 4, 2048),
    "qwen2.5-1.5b": (dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                          num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                          max_position_embeddings=8192), 4, 2048),
    "qwen3-1.7b": (dict(model_type="qwen3", hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                        tie_word_embeddings=True, max_position_embeddings=8192), 4, 2048),
    "gemma-2-2b": (dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
                        max_position_embeddings=8192, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                        query_pre_attn_scalar=256, sliding_window=4096), 1, 2048),
    "phi-3-mini": (dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, tie_word_embeddings=False,
                        max_position_embeddings=4096, original_max_position_embeddings=4096), 1, 2048),
    "mistral-7b": (dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=32768, tie_word_embeddings=False,
                        max_position_embeddings=8192, sliding_window=None), 1, 2048),
    "qwen3-moe-small": (dict(model_type="qwen3_moe", hidden_size=1024, intermediate_size=3072, moe_intermediate_size=512,
                             num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
                             num_experts=16, num_experts_per_tok=4, vocab_size=151936, tie_word_embeddings=True,
                             max_position_embeddings=8192), 4, 1024),
    "olmo2-1b": (dict(model_type="olmo2", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=16, num_key_value_heads=16, vocab_size=100352, tie_word_embeddings=False,
                      max_position_embeddings=4096), 4, 2048),
    "mixtral-small": (dict(model_type="mixtral", hidden_size=1024, intermediate_size=2048, num_hidden_layers=8,
                           num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, num_experts_per_tok=2,
                           vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096,
                           sliding_window=None), 8, 1024),
    "starcoder2-3b": (dict(model_type="starcoder2", hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
                           num_attention_heads=24, num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True,
                           max_position_embeddings=4096, sliding_window=4096), 1, 2048),
    "bert-base": (dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, vocab_size=30522, max_position_embeddings=512), 32, 512),
    "gpt2": (dict(model_type="gpt2", n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
             8, 1024),
}
# name: (preset, leaves over it); "long": no flags, a run long enough (LONG_STEPS) that the fast defaults compile
# it, stopped after --steps steps
LONG_STEPS = 900
SETTINGS = {"defaults": (None, {}), "checkpointed": (None, {"activation_checkpointing": True, "loss": "chunked"}),
            "fastest": ("fastest", {"compile": True, "packing": True}),   # as measured before Fastest left compile
            "largest": ("largest", {}), "long": (None, {})}               # to the repay rule (short runs here)


def make_model(name: str, folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from tiny import make_tokenizer

    out = folder / name
    if (out / "config.json").exists():
        return out
    cfg_d, _, _ = SHAPES[name]
    tok = make_tokenizer()
    d = dict(cfg_d)
    config = AutoConfig.for_model(d.pop("model_type"), **d, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    auto = AutoModelForSequenceClassification if config.model_type == "bert" else AutoModelForCausalLM
    if config.model_type == "bert":
        config.num_labels = 2
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = auto.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def make_data(folder: Path, seq_len: int, rows: int, classification: bool) -> Path:
    from tiny import WORDS

    path = folder / f"data-{seq_len}-{rows}-{'cls' if classification else 'lm'}.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            text = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(seq_len + 8))  # fills seq_len
            fh.write(json.dumps({"text": text, "label": ["yes", "no"][i % 2]} if classification
                                else {"text": text}) + "\n")
    return path


def config_for(name: str, setting: str, model: Path, data: Path, steps: int, out: Path):
    from ftstudio.core.config import RunConfig
    from ftstudio.core.presets import apply_preset

    _, batch, seq = SHAPES[name]
    steps = LONG_STEPS if setting == "long" else steps
    cfg = RunConfig().replace(source=str(model), dataset=str(data), batch_size=batch, seq_len=seq, max_steps=steps,
                              memory_snapshot_every=1, export=False, val_fraction=0.0, eval_every=0,
                              output=str(out), device="cuda", log_every=1)
    preset, leaves = SETTINGS[setting]
    if preset:
        cfg = apply_preset(cfg, preset)
    return cfg.replace(**leaves) if leaves else cfg


def measure_run(cfg, stop_after: int | None = None) -> dict:
    import torch
    from ftstudio.core.control import Control
    from ftstudio.core.events import LogLine, MemorySnapshot, StepMetrics
    from ftstudio.engine import run as train

    peaks, lines, phases = [], [], {}
    control = Control()

    def sink(e):
        if isinstance(e, StepMetrics) and stop_after and e.step >= stop_after:
            control.request_stop()
        if isinstance(e, MemorySnapshot) and e.allocated_peak:
            peaks.append(e.allocated_peak)
            for k, v in (e.measured_phases or {}).items():
                phases[k] = max(phases.get(k, 0), v)
        elif isinstance(e, LogLine) and ("Fast defaults" in e.message or "Memory plan" in e.message or "bit" in e.message
                                                or e.level == "error"):
            lines.append(e.message[:300])

    import gc
    gc.collect()
    if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
        torch._C._cuda_clearCublasWorkspaces()    # cuBLAS's workspaces of an earlier row (kept per process)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()     # what an earlier run of this process left allocated (0 expected)
    torch.cuda.reset_peak_memory_stats()
    try:
        from torch._dynamo.utils import counters
        counters.clear()
    except ImportError:
        counters = {}
    t = time.time()
    result = train(cfg, sink, control)
    status = getattr(result, "status", "failed")
    reason = getattr(result, "reason", "")
    dynamo = {k: dict(v) for k, v in counters.items() if v and k in ("stats", "recompiles", "graph_break")}
    return {"measured": max(peaks) if peaks else None, "status": status, "reason": reason[:300], "log": lines,
            "seconds": round(time.time() - t, 1), "reserved_max": torch.cuda.max_memory_reserved(),
            "measured_phases": phases, "allocated_before": before, "dynamo": {k: dict(list(v.items())[:8]) for k, v in dynamo.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--settings", default="defaults,checkpointed,fastest,largest")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--work", default="/tmp/plan_vs_measured")
    ap.add_argument("--out")
    ap.add_argument("--jsonl")
    ap.add_argument("--rows", help="shape:setting,... in this order (instead of --shapes x --settings)")
    ap.add_argument("--deadline", type=float, default=0, help="seconds: start no measured row after this")
    ap.add_argument("--plan-only", action="store_true")
    ap.add_argument("--measured", help="with --plan-only: raw rows of earlier runs, comma-separated")
    ap.add_argument("--gpu-machine", action="store_true", help="with --plan-only: decide as with triton installed "
                    "and torchao importable (the H100's torchao 0.15)")
    ap.add_argument("--leaked-before", action="store_true",
                    help="with --measured: a Largest row's peak less the weights and optimizer states of the Largest "
                         "rows before it in the same file (runs of one process; the step in backward kept every "
                         "finished run's model alive until train/in_backward.py's fix)")
    a = ap.parse_args()
    measured, leaked_from = {}, {}
    for path in (a.measured.split(",") if a.measured else []):
        earlier = []
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            if r.get("measured"):
                measured[(r["shape"], r["setting"])] = r["measured"]
                if r["setting"] == "largest":
                    leaked_from[r["shape"]] = list(earlier) if a.leaked_before else []
                    earlier.append(r["shape"])
    if a.gpu_machine:
        from ftstudio.engine.memory import lowbit
        from ftstudio.engine.train import fast_path
        fast_path.inductor_available = lambda: True
        for kind in ("adamw8bit", "adamw4bit"):
            for probe in (False, True):
                lowbit._CACHE[(kind, probe)] = lowbit.LowBit(kind, "torchao")
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows_out = []
    capacity = _capacity()
    t0 = time.time()
    pairs = [tuple(r.split(":")) for r in a.rows.split(",")] if a.rows else \
        [(name, setting) for setting in a.settings.split(",") for name in a.shapes.split(",")]
    for name, setting in pairs:
        cfg_d, batch, seq = SHAPES[name]
        cls = cfg_d["model_type"] == "bert"
        late = not a.plan_only and a.deadline and time.time() - t0 > a.deadline
        model = work / name if a.plan_only or late else make_model(name, work)
        data = make_data(work, seq, batch * (a.steps + 1), cls)
        row = {"shape": name, "setting": setting, "batch": batch, "seq_len": seq}
        try:
            cfg = config_for(name, setting, model, data, a.steps, work / "runs")
            total = LONG_STEPS if setting == "long" else a.steps
            # rows that all fill seq_len: no padding (a classifier's all-ones mask is dropped before SDPA)
            facts = RowFacts(count=batch * (a.steps + 1), longest=seq, fill=1.0, padded=False, total_steps=total)
            t = time.time()
            rp = plan_run(cfg, model_config=dict(cfg_d), device="cuda", rows=facts)
            row.update(planned=rp.plan.peak_allocated, method=rp.plan.method, plan_s=round(time.time() - t, 2),
                       margin=rp.plan.margin, notes=rp.plan.notes, choices=rp.lines,
                       closed_form=rp.plan.parts.get("closed_form_peak", rp.plan.peak_allocated),
                       phase=rp.plan.peak_phase, compiled=rp.config.memory.compile,
                       planned_phases={k[6:]: v for k, v in rp.plan.parts.items() if k.startswith("phase:")})
            if capacity and rp.plan.peak_allocated > 0.97 * capacity:
                row.update(status="skipped", reason=f"planned beyond the card's {capacity / 1e9:.0f} GB")
            elif late:
                row.update(status="skipped", reason="--deadline reached")
            elif not a.plan_only:
                row.update(measure_run(cfg, stop_after=a.steps if setting == "long" else None))
            elif (name, setting) in measured:
                row["measured"] = measured[(name, setting)]
                if leaked_from.get(name):
                    leaked = sum(_model_and_states(n, work, a.steps) for n in leaked_from[name])
                    row.update(measured_raw=row["measured"], measured=row["measured"] - leaked, leaked=leaked,
                               leaked_from=leaked_from[name])
        except Exception as e:  # noqa: BLE001 - one failed row must not end the table
            row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
        if row.get("planned") and row.get("measured"):
            row["error"] = (row["planned"] - row["measured"]) / row["measured"]
            row["closed_error"] = (row["closed_form"] - row["measured"]) / row["measured"]
        rows_out.append(row)
        print(json.dumps(row, default=str), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
    table = format_table(rows_out)
    print(table)
    if a.out:
        Path(a.out).write_text(table + "\n")
    return 0


def _model_and_states(name: str, work: Path, steps: int) -> int:
    """Weights + optimizer state of ``name``'s Largest run (what a finished run left allocated before the fix)."""
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    cfg_d, batch, seq = SHAPES[name]
    cls = cfg_d["model_type"] == "bert"
    cfg = config_for(name, "largest", work / name, make_data(work, seq, batch * (steps + 1), cls), steps, work / "runs")
    facts = RowFacts(count=batch * (steps + 1), longest=seq, fill=1.0, padded=False, total_steps=steps)
    plan = plan_run(cfg, model_config=dict(cfg_d), device="cuda", rows=facts, trace=False).plan
    return plan.weights + plan.optimizer


def _capacity() -> int | None:
    try:
        import torch
        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        return None


def format_table(rows: list[dict]) -> str:
    gb = lambda x: f"{x / 1e9:.2f}" if x else "—"  # noqa: E731
    lines = ["| shape | setting | batch × seq | method | planned GB | measured GB | error | closed form error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['error']:+.1%}" if "error" in r else r.get("status", "")
        cf = f"{r['closed_error']:+.1%}" if "closed_error" in r else ""
        lines.append(f"| {r['shape']} | {r['setting']} | {r['batch']} × {r['seq_len']} | {r.get('method', '')} | "
                     f"{gb(r.get('planned'))} | {gb(r.get('measured'))} | {err} | {cf} |")
    errs = [r["error"] for r in rows if "error" in r]
    if errs:
        absd = sorted(abs(e) for e in errs)
        lines += ["", f"{len(errs)} runs: median |error| {statistics.median(absd):.1%}, worst |error| {absd[-1]:.1%}, "
                      f"largest under-plan {min(min(errs), 0):+.1%}"]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
