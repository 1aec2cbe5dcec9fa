"""The memory plan of a DPO / SimPO run (train/dpo_plan.py): the tracer runs the trainer's own pair step (2B rows,
the reference option, the loss path) on fake tensors, and the fake trace equals the same step on real CPU tensors;
the reference's cost per option; the length from the data's longest pair; `ftstudio estimate` with a pair file."""
from __future__ import annotations

import json

import pytest
import torch

from ftstudio.core.config import RunConfig
from ftstudio.engine.memory.tracer.step import StepChoices, _trace_once, hf_config
from ftstudio.engine.train.dpo_plan import pair_loss
from ftstudio.engine.train.plan_run import RowFacts, plan_run

LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=2000, max_position_embeddings=256)


def pair_choices(run, **kw) -> StepChoices:
    base = dict(batch=2, seq_len=32, precision="fp32", block=1, loss_fn=pair_loss(run), padded=True)
    base.update(kw)
    return StepChoices(**base)


@pytest.mark.parametrize("reference,loss", [("precompute", "full"), ("model", "full"), ("model", "chunked")])
def test_the_traced_pair_step_equals_the_real_one_and_holds_two_rows_per_pair(reference, loss):
    config = hf_config(LLAMA)
    run = RunConfig().replace(method="dpo", dpo_reference=reference)
    fake = _trace_once(config, pair_choices(run, loss=loss), False)
    torch.manual_seed(0)
    real = _trace_once(config, pair_choices(run, loss=loss), False, fake=False)
    for key in ("weights", "gradients", "train_peak", "eval_peak"):
        assert fake[key] == pytest.approx(real[key], rel=0.01), key
    # B pairs are 2B rows: the pair step of 2 pairs holds more than the SFT step of 2 rows, about that of 4 rows
    from ftstudio.engine.train.loss import causal_lm_loss
    sft2 = _trace_once(config, pair_choices(run, loss_fn=causal_lm_loss, loss=loss), False)
    sft4 = _trace_once(config, pair_choices(run, loss_fn=causal_lm_loss, loss=loss, batch=4), False)
    act = fake["train_peak"] - fake["weights"]
    assert act > 1.5 * (sft2["train_peak"] - sft2["weights"])
    assert act == pytest.approx(sft4["train_peak"] - sft4["weights"], rel=0.35)


def test_the_plan_counts_the_reference_per_option_and_follows_the_rows():
    run = RunConfig().replace(method="dpo", batch_size=4, seq_len=256, device="cuda", precision="bf16-mixed")

    def planned(longest, **kw):
        rows = RowFacts(count=100, longest=longest, fill=0.3, padded=True, total_steps=10)
        return plan_run(run.replace(**kw), model_config=LLAMA, device="cuda", rows=rows)

    pre, frozen = planned(60, dpo_reference="precompute"), planned(60, dpo_reference="model")
    assert pre.plan.method == frozen.plan.method == "traced"
    assert pre.padded and not pre.config.data.packing and pre.seq_len == 60       # pairs are padded, never packed
    params = pre.plan.params
    assert frozen.plan.parts["reference"] == 4 * params and pre.plan.parts["reference"] == 0   # fp32 copy of θ0
    # The frozen copy's forward runs before the policy saves anything: the peak grows by its weights only.
    assert frozen.plan.peak_allocated - pre.plan.peak_allocated == pytest.approx(4 * params, rel=0.02)
    longer = planned(200, dpo_reference="precompute")
    assert longer.seq_len == 200 and longer.plan.peak_allocated > pre.plan.peak_allocated
    # the rows' length, not seq_len: far below the closed form's two full-length rows per pair
    from ftstudio.engine.memory.plan import CUBLAS_WORKSPACES    # the traced plan counts cuBLAS's, the closed form not
    assert pre.plan.peak_allocated - CUBLAS_WORKSPACES < pre.plan.parts["closed_form_peak"]
    chunked = planned(200, dpo_reference="precompute", loss="chunked")
    # the chunked head path is traced as it runs (here one slice of 8192 tokens holds all 1600: its fp32 logits
    # are recomputed in backward beside their gradient, so it holds more, not less; the real step agrees above)
    assert chunked.plan.peak_allocated != longer.plan.peak_allocated
    simpo = planned(60, method="simpo")
    assert simpo.plan.parts["reference"] == 0


def test_estimate_plans_each_reference_option_from_the_pair_file(tmp_path, capsys):
    from test_dpo import write_pairs
    from tiny import save_tiny_llama

    from ftstudio.cli import main

    model = save_tiny_llama(tmp_path / "m")
    data = write_pairs(tmp_path / "p.jsonl", n=16)
    argv = ["estimate", str(model), "--dataset", str(data), "--method", "dpo", "--seq-len", "128",
            "--batch-size", "4", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "traced"
    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import prepare_data
    from ftstudio.engine.train.dpo_plan import longest_pair
    from transformers import AutoTokenizer
    prepared = prepare_data(DataConfig(dataset=str(data), seq_len=128), AutoTokenizer.from_pretrained(str(model)),
                            task="causal-lm", seed=0)
    longest = longest_pair(prepared, 128)
    assert longest < 128
    assert any(f"the longest {longest} tokens" in c for c in report["choices"]), report["choices"]
    ref = report["reference"]
    assert ref["chosen"] == "precompute" and ref["precompute"]["method"] == ref["model"]["method"] == "traced"
    assert ref["precompute"]["peak"] == report["peak_allocated_bytes"]
    assert ref["model"]["reference"] > 0 and ref["model"]["peak"] > ref["precompute"]["peak"]


def test_the_first_step_is_planned_without_the_optimizer_state():
    """The trainer gives the first step the longest pairs, and torch makes the optimizer state at the first
    step(): the state is planned beside the later steps' longest batch (on an H100 this took the plan from +20 %
    to within 3 %)."""
    from ftstudio.engine.train.dpo_plan import FIRST_STEP
    run = RunConfig().replace(method="dpo", batch_size=4, seq_len=256, device="cuda", precision="bf16-mixed")

    def planned(longest, later, **kw):
        rows = RowFacts(count=100, longest=longest, fill=0.3, padded=True, total_steps=10, later=later)
        return plan_run(run.replace(**kw), model_config=LLAMA, device="cuda", rows=rows).plan

    whole, split, short = planned(200, None), planned(200, 60), planned(60, None)
    fb = "phase:forward/backward"
    assert split.parts[f"phase:{FIRST_STEP}"] == whole.parts[fb] - whole.optimizer
    assert split.parts[fb] == short.parts[fb]
    assert split.peak_allocated == max(whole.parts[fb] - whole.optimizer, short.parts[fb],
                                       whole.parts["phase:optimizer step"], whole.parts["phase:evaluation"])
    assert short.peak_allocated <= split.peak_allocated < whole.peak_allocated
    assert any("before the optimizer state exists" in n for n in split.notes)
    assert planned(200, 200).peak_allocated == whole.peak_allocated            # the longest comes back later
    # the step inside backward makes the state during the first backward: no relief
    assert planned(200, 60, optimizer_in_backward=True).peak_allocated == planned(
        200, None, optimizer_in_backward=True).peak_allocated


def test_the_later_steps_longest_batch_follows_the_trainers_order(tiny_llama, tmp_path):
    from test_dpo import WORDS, prepared_pairs

    from ftstudio.engine.train.dpo import later_longest, longest_pair, pair_length
    from ftstudio.engine.train.schedule import plan_schedule, row_stats
    data = tmp_path / "p.jsonl"          # prompts of 2 to 18 words: two pairs are the longest
    data.write_text("".join(json.dumps({"prompt": " ".join(WORDS[:2 + i % 17]), "chosen": " yes good",
                                        "rejected": " no bad"}) + "\n" for i in range(40)))
    prepared = prepared_pairs(tiny_llama, data)
    cfg = RunConfig().replace(method="dpo", batch_size=4, seq_len=64, epochs=1)
    sched = plan_schedule(cfg, len(prepared.train), 0, *row_stats(prepared.train, [], cfg))
    first = max(pair_length(prepared.train[i]) for i in sched.batch_indices(0))
    assert first == longest_pair(prepared, 64)                      # length-grouped: the longest pairs first
    later = later_longest(cfg, prepared)
    assert later == max(pair_length(prepared.train[i]) for mb in range(1, sched.batches_per_epoch)
                        for i in sched.batch_indices(mb)) and later < first
    assert later_longest(cfg.replace(epochs=3), prepared) == first             # epoch 2 starts with them again
