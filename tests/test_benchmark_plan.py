"""eval.benchmarks in the memory plan: the harness's pass (a no-grad forward of train.batch_size × data.seq_len
tokens with full logits and their log-softmax) is a phase of the run's plan, in the closed form and in the traced
plan, and is said with the plan (`ftstudio estimate`)."""
import json

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.engine.memory import PRECISION_BYTES, chunk_tokens, estimate
from test_memory_trace import TINY

SMOL = dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)


def phases(plan):
    return {k[6:]: v for k, v in plan.parts.items() if k.startswith("phase:")}


def test_no_benchmarks_no_phase_and_no_note():
    plan = estimate(SMOL, RunConfig().replace(batch_size=16, seq_len=256, precision="bf16-mixed", device="cuda"))
    assert "benchmarks" not in phases(plan) and not any("eval.benchmarks" in n for n in plan.notes)


def test_with_full_logits_the_harness_pass_is_the_evaluation_pass():
    run = RunConfig().replace(batch_size=16, seq_len=256, precision="bf16-mixed", device="cuda", loss="full",
                              benchmarks="instructions_mc")
    p = phases(estimate(SMOL, run))
    assert p["benchmarks"] == p["evaluation"]


def test_a_chunked_run_still_plans_the_harness_full_logits():
    """The trainer slices its loss; the harness does not: its pass adds the logits the slices saved."""
    run = RunConfig().replace(batch_size=16, seq_len=256, precision="bf16-mixed", device="cuda", loss="chunked",
                              benchmarks="instructions_mc")
    plan = estimate(SMOL, run)
    p = phases(plan)
    T, V, c = 16 * 256, 49152, PRECISION_BYTES["bf16-mixed"][1]
    assert p["benchmarks"] - p["evaluation"] == (T - min(T, chunk_tokens(V))) * V * (c + 8)
    note = next(n for n in plan.notes if n.startswith("eval.benchmarks"))
    assert "16 × 256 tokens" in note and f"{p['benchmarks'] / 1e9:.2f} GB" in note
    # long rows, checkpointed, sliced loss: the harness's full logits are the run's peak, and the plan says so
    long = run.replace(batch_size=1, seq_len=4096, activation_checkpointing=True)
    with_bench, without = estimate(SMOL, long), estimate(SMOL, long.replace(benchmarks=""))
    assert with_bench.peak_phase == "benchmarks" and without.peak_phase != "benchmarks"
    assert with_bench.peak_allocated == phases(with_bench)["benchmarks"] > without.peak_allocated


def test_the_traced_plan_and_estimate_show_the_benchmark_pass(tmp_path, capsys):
    from tiny import save_tiny_llama

    from ftstudio.cli import main
    from ftstudio.engine.memory.traced import plan

    run = RunConfig().replace(batch_size=2, seq_len=64, device="cuda", benchmarks="tiny_mc")
    traced = plan(TINY["llama"], run, device="cuda")
    assert traced.method == "traced"
    p = phases(traced)
    assert p["benchmarks"] >= p["evaluation"] and any(n.startswith("eval.benchmarks") for n in traced.notes)
    model = save_tiny_llama(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the cat and the dog " * (3 + i % 5)}) + "\n" for i in range(40)))
    yaml = tmp_path / "run.yaml"
    RunConfig().replace(source=str(model), dataset=str(data), batch_size=4, seq_len=64, benchmarks="tiny_mc").save(yaml)
    assert main(["estimate", "--config", str(yaml), "--max-steps", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert any(n.startswith("eval.benchmarks: the harness pass") for n in report["notes"]), report["notes"]
