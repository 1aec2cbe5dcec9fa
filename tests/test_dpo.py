"""DPO / SimPO on tiny models on the CPU: the loss, the rewards and the gradient equal a plain reference written
here from TRL's formulas (dpo_trainer.py's sigmoid loss, cpo_trainer.py's simpo), with the reference
log-probabilities precomputed and from a frozen model; a stopped and resumed DPO run ends with exactly the weights
of a straight one."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.errors import ConfigError
from ftstudio.core.events import EvalMetrics, LogLine, RunFailed, RunFinished, RunStarted, StepMetrics

WORDS = "the a of to and in is it that for on with as was by this be are from or at which".split()


def write_pairs(path, n=24, seed=0):
    import random
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(2 + i % 4))
        if i % 3 == 0:    # strings
            rows.append({"prompt": q, "chosen": " yes good answer" + " one" * (i % 2), "rejected": " no bad"})
        elif i % 3 == 1:  # message lists
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": "yes good"}],
                         "rejected": [{"role": "assistant", "content": "no bad answer" + " two" * (i % 2)}]})
        else:             # full conversations: the implicit prompt is the turns both share
            rows.append({"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": "good dog"}],
                         "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": "bad cat"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def prepared_pairs(model_dir, data):
    from transformers import AutoTokenizer

    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import prepare_data
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return prepare_data(DataConfig(dataset=str(data), val_fraction=0.0, seq_len=64), tok, task="causal-lm", seed=0)


def plain_logp(model, ids, labels):
    """Σ log p(labels[t] | ids[:t]) over scored positions, one unpadded row, full log-softmax."""
    logits = model(torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return sum(logp[t - 1, labels[t]] for t in range(1, len(ids)) if labels[t] != -100)


def plain_losses(model, ref_model, examples, method, beta, ls, gamma=0.5):
    """TRL's formulas, pair by pair."""
    losses, rewards = [], []
    for ex in examples:
        pc = plain_logp(model, ex["input_ids"], ex["labels"])
        pr = plain_logp(model, ex["rejected_input_ids"], ex["rejected_labels"])
        if method == "simpo":
            nc = sum(1 for x in ex["labels"][1:] if x != -100)
            nr = sum(1 for x in ex["rejected_labels"][1:] if x != -100)
            h = pc / nc - pr / nr - gamma / beta
            rc, rr = beta * pc / nc, beta * pr / nr
        else:
            with torch.no_grad():
                qc = plain_logp(ref_model, ex["input_ids"], ex["labels"])
                qr = plain_logp(ref_model, ex["rejected_input_ids"], ex["rejected_labels"])
            h = (pc - pr) - (qc - qr)
            rc, rr = beta * (pc - qc), beta * (pr - qr)
        losses.append(-torch.log(torch.sigmoid(beta * h)) * (1 - ls) - torch.log(torch.sigmoid(-beta * h)) * ls)
        rewards.append((float(rc.detach()), float(rr.detach())))
    return torch.stack(losses).mean(), rewards


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,reference,ls,chunked", [
    ("dpo", "precompute", 0.0, False), ("dpo", "model", 0.0, False), ("dpo", "precompute", 0.2, False),
    ("simpo", None, 0.1, False), ("dpo", "model", 0.1, True), ("dpo", "precompute", 0.0, True)])
def test_loss_rewards_and_gradient_equal_the_plain_reference(method, reference, ls, chunked, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.train.dpo import PreferenceObjective, precompute_reference

    prepared = prepared_pairs(tiny_llama, write_pairs(tmp_path / "p.jsonl", n=6))
    examples = prepared.train
    assert len({len(ex["input_ids"]) for ex in examples} | {len(ex["rejected_input_ids"]) for ex in examples}) > 1
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    torch.manual_seed(1)
    ref_model = copy.deepcopy(policy)
    with torch.no_grad():  # a reference other than the policy, so that the log-ratios are not 0
        for p in ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref_model.eval()
    train = RunConfig().replace(method=method, dpo_beta=0.5, dpo_label_smoothing=ls, simpo_gamma=0.3).train

    ours_model, plain_model = copy.deepcopy(policy), copy.deepcopy(policy)
    if reference == "precompute":
        precompute_reference(ref_model, prepared, device="cpu", batch_size=4, chunked=chunked)
        assert all(len(ex["ref"]) == 2 for ex in examples)
    objective = PreferenceObjective(train, reference=ref_model if reference == "model" else None, chunked=chunked)
    batch = prepared.collate(examples)
    assert ("ref_logps" in batch) == (reference == "precompute")
    loss = objective.loss(ours_model, batch)
    loss.backward()
    metrics = objective.take()

    expected, rewards = plain_losses(plain_model, ref_model, examples, method, 0.5, ls, gamma=0.3)
    expected.backward()
    assert abs(float(loss) - float(expected)) < 1e-5
    rc = sum(r[0] for r in rewards) / len(rewards)
    rr = sum(r[1] for r in rewards) / len(rewards)
    assert abs(metrics["rewards/chosen"] - rc) < 1e-5 and abs(metrics["rewards/rejected"] - rr) < 1e-5
    assert abs(metrics["rewards/margins"] - (rc - rr)) < 1e-5
    assert metrics["rewards/accuracies"] == pytest.approx(sum(a > b for a, b in rewards) / len(rewards), abs=1e-6)
    ga, gb = grads(ours_model), grads(plain_model)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=0), (name, (ga[name] - gb[name]).abs().max())


def test_pairs_are_masked_to_their_answers_and_bad_rows_are_named(tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    from ftstudio.core.config import DataConfig
    from ftstudio.engine.data import check_data, preview
    from ftstudio.engine.data.preference import encode_pair, implicit_prompt

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    norm = {"prompt": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "dog"},
                       {"role": "user", "content": "sun"}],
            "chosen": [{"role": "assistant", "content": "moon"}], "rejected": [{"role": "assistant", "content": "bad"}]}
    c, r = encode_pair(norm, tok, 64)
    trained = [tok.decode([t]) for t, lab in zip(c.input_ids, c.labels) if lab != -100]
    assert trained == ["moon", "<|end|>"]        # the prompt's own assistant turn is not scored
    assert [tok.decode([t]) for t, lab in zip(r.input_ids, r.labels) if lab != -100] == ["bad", "<|end|>"]
    assert implicit_prompt("the cat is good", "the cat is bad") == ("the cat is", " good", " bad")

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "a", "chosen": "yes", "rejected": "no"},
        {"prompt": "a", "chosen": 5, "rejected": "no"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},
        {"prompt": [{"role": "usr", "content": "x"}], "chosen": "a", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "x"},
                                                                     {"role": "assistant", "content": "y"}]},
    ]) + "\n")
    report = check_data(DataConfig(dataset=str(bad), val_fraction=0), str(tiny_llama))
    assert report.format == "preference"
    named = {(p.row, p.field) for p in report.errors}
    assert named == {(2, "chosen"), (3, "rejected"), (4, "prompt[0].role"), (5, "chosen")}, report.errors
    good = write_pairs(tmp_path / "good.jsonl", n=3)
    shown = preview(DataConfig(dataset=str(good), val_fraction=0), str(tiny_llama), 2)
    assert [(x["row"], x["side"]) for x in shown] == [(1, "chosen"), (1, "rejected"), (2, "chosen"), (2, "rejected")]
    assert shown[2]["trained"].strip() == "yes good <|end|>" and "bad answer" in shown[3]["trained"]


def run(cfg, control=None, resume_from=None, reporter=None):
    from ftstudio.engine.train import Trainer
    events = []

    def report(e):
        events.append(e)
        if reporter:
            reporter(e)
    return Trainer(cfg, report, control, resume_from=resume_from).run(), events


def dpo_config(model, data, out, **kw):
    base = dict(source=str(model), dataset=str(data), output=str(out), run_name="r", max_steps=8, batch_size=4,
                lr=5e-3, seq_len=48, eval_every=4, val_fraction=0.25, device="cpu", precision="fp32", seed=3,
                method="dpo", export=False)
    base.update(kw)
    return RunConfig().replace(**base)


def test_dpo_run_reports_preference_metrics_and_resumes_exactly(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    cfg = dpo_config(tiny_llama, write_pairs(tmp_path / "p.jsonl", n=32), tmp_path / "runs", grad_accum=2,
                     export=True)
    straight, events = run(cfg.replace(run_name="straight"))
    assert isinstance(straight, RunFinished), straight
    steps = [e for e in events if isinstance(e, StepMetrics)]
    assert set(steps[0].objective) >= {"rewards/chosen", "rewards/rejected", "rewards/margins",
                                       "rewards/accuracies", "logps/chosen", "logps/rejected"}
    assert steps[-1].loss < steps[0].loss and steps[-1].objective["rewards/margins"] > 0
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    assert evals and evals[-1].accuracy is not None and evals[-1].perplexity is None
    assert "rewards/margins" in evals[-1].objective
    lines = [json.loads(x) for x in (tmp_path / "runs" / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert any(x["event"] == "step" and "rewards/margins" in x["objective"] for x in lines)
    card = (tmp_path / "runs" / "straight" / "final" / "README.md").read_text()
    assert "- dpo\n" in card.split("---")[1]          # the model card's tags
    stored = json.loads((tmp_path / "runs" / "straight" / "reference_logps.json").read_text())
    assert len(stored["train"]) == 24 and len(stored["val"]) == 8
    # The "before": the held-out pairs evaluated at step 0, where θ0's own preference is the share of pairs whose
    # chosen answer it finds likelier (its stored log-probabilities say which), in the events, file and summary.
    assert evals[0].step == 0 and evals[0].loss == pytest.approx(math.log(2), abs=1e-4)   # policy = reference
    assert abs(evals[0].objective["rewards/margins"]) < 1e-4
    theta0 = sum(c > r for c, r, _ in stored["val"].values()) / len(stored["val"])
    assert evals[0].objective["logps/accuracies"] == pytest.approx(theta0)
    assert straight.eval["before"]["logps/accuracies"] == pytest.approx(theta0)
    assert evals[-1].objective["logps/accuracies"] >= theta0 and evals[-1].accuracy > 0.5
    assert any(x["event"] == "eval" and x["step"] == 0 for x in lines)
    assert "| before training | 0 |" in card

    control = Control()

    def stop_at_4(event):
        if isinstance(event, StepMetrics) and event.step == 4:
            control.request_stop()
    half, _ = run(cfg.replace(run_name="halves"), control, reporter=stop_at_4)
    assert half.status == "stopped" and half.steps == 4
    run_dir = tmp_path / "runs" / "halves"
    resumed, events = run(cfg.replace(run_name="halves"), resume_from=run_dir)
    assert isinstance(resumed, RunFinished) and resumed.steps == 8, resumed
    assert next(e for e in events if isinstance(e, RunStarted)).resumed_from_step == 4
    assert any(isinstance(e, LogLine) and "read from" in e.message for e in events)  # θ0's values, not recomputed
    # The stored values belong to their pairs: changed data is refused by row, not silently scored against.
    from ftstudio.core.errors import DataError
    from ftstudio.engine.train.dpo import precompute_reference
    prepared = prepared_pairs(tiny_llama, tmp_path / "p.jsonl")
    prepared.train = [ex for ex in prepared.train if str(ex["row"]) in stored["train"]][:2]
    prepared.val = []
    precompute_reference(None, prepared, device="cpu", path=run_dir / "reference_logps.json")  # read back: no model
    assert all(len(ex["ref"]) == 2 for ex in prepared.train)
    prepared.train[1]["rejected_input_ids"] = prepared.train[1]["rejected_input_ids"][:-1]
    with pytest.raises(DataError, match="not the pair"):
        precompute_reference(None, prepared, device="cpu", path=run_dir / "reference_logps.json")
    assert resumed.eval["before"] == straight.eval["before"]       # kept in the run folder across the resume
    a = load_file(str(tmp_path / "runs" / "straight" / "final" / "model.safetensors"))
    b = load_file(str(run_dir / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("extra", [dict(method="simpo", dpo_beta=2.0, loss="chunked"),
                                   dict(dpo_reference="model", l2sp=0.1, retention_eval=True, metric="accuracy")])
def test_simpo_and_the_frozen_reference_train_with_the_other_options(extra, tiny_llama, tmp_path):
    result, events = run(dpo_config(tiny_llama, write_pairs(tmp_path / "p.jsonl", n=24), tmp_path / "runs",
                                    max_steps=6, eval_every=3, **extra))
    assert isinstance(result, RunFinished), result
    steps = [e for e in events if isinstance(e, StepMetrics)]
    assert steps[-1].loss < steps[0].loss and steps[-1].objective["rewards/margins"] > steps[0].objective[
        "rewards/margins"]
    assert result.eval["accuracy"] is not None
    assert not (tmp_path / "runs" / "r" / "reference_logps.json").exists()   # nothing precomputed


def test_config_and_data_mismatches_are_refused_by_name(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match="data.packing"):
        RunConfig().replace(method="dpo", packing=True)
    with pytest.raises(ConfigError, match="mix_fraction"):
        RunConfig().replace(method="simpo", mix_fraction=0.1)
    with pytest.raises(ConfigError, match="train.method"):
        RunConfig().replace(method="ppo")
    RunConfig().replace(method="dpo", metric="accuracy")  # preference accuracy judges a dpo run
    pairs = write_pairs(tmp_path / "p.jsonl", n=8)
    failed, _ = run(dpo_config(tiny_llama, pairs, tmp_path / "runs", method="sft", max_steps=1))
    assert isinstance(failed, RunFailed) and "--method dpo" in failed.reason
    text = tmp_path / "t.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"the cat {i}"}) for i in range(8)) + "\n")
    failed, _ = run(dpo_config(tiny_llama, text, tmp_path / "runs", run_name="t", max_steps=1))
    assert isinstance(failed, RunFailed) and "preference data" in failed.reason
    assert not (tmp_path / "runs").exists()   # refused before the run folder: nothing written (both mismatches)
    from ftstudio.engine.train.plan_run import read_rows   # the plan (estimate, the GUI's bar) counts no such run
    with pytest.raises(ConfigError, match="preference data"):
        read_rows(dpo_config(tiny_llama, text, tmp_path / "runs", run_name="t"))


def test_trackers_get_the_preference_metrics_as_scalars():
    from ftstudio.engine.trackers import scalars
    step, vals = scalars(StepMetrics(step=3, loss=0.5, lr=1e-5, grad_norm=1.0, tokens_per_s=10.0,
                                     objective={"rewards/margins": 0.25, "rewards/accuracies": 0.75}))
    assert step == 3 and vals["train/rewards/margins"] == 0.25 and vals["train/rewards/accuracies"] == 0.75
    _, vals = scalars(EvalMetrics(step=3, loss=0.4, accuracy=0.8, objective={"rewards/chosen": 0.1}))
    assert vals["eval/accuracy"] == 0.8 and vals["eval/rewards/chosen"] == 0.1
    assert math.isfinite(vals["eval/loss"])


def test_the_plan_counts_two_rows_per_pair_and_the_reference_per_option():
    from ftstudio.engine.memory import estimate
    from ftstudio.engine.memory.reference import reference_costs
    shape_cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                 "max_position_embeddings": 512}
    base = RunConfig().replace(device="cuda", batch_size=4, seq_len=128, precision="bf16-mixed")
    sft = estimate(shape_cfg, base)
    dpo = estimate(shape_cfg, base.replace(method="dpo", dpo_reference="precompute"))
    doubled = estimate(shape_cfg, base.replace(batch_size=8))
    assert dpo.peak_allocated == doubled.peak_allocated > sft.peak_allocated   # a pair = two rows
    frozen = estimate(shape_cfg, base.replace(method="dpo", dpo_reference="model"))
    assert frozen.anchor - dpo.anchor == 4 * sft.params                        # one fp32 copy of the weights
    assert frozen.peak_allocated == dpo.peak_allocated + 4 * sft.params
    costs = reference_costs(estimate.__globals__["shape_from_config"](shape_cfg),
                            base.replace(method="dpo"))
    assert costs["chosen"] == "precompute" and costs["precompute"]["reference"] == 0
    assert costs["model"]["reference"] == 4 * sft.params
    assert reference_costs(None, base) == {}


def test_pairs_are_length_grouped_by_their_longer_answer():
    from ftstudio.engine.train.schedule import row_stats
    pairs = [{"input_ids": [1] * 3, "labels": [1] * 3, "rejected_input_ids": [1] * 9, "rejected_labels": [1] * 9},
             {"input_ids": [1] * 7, "labels": [1] * 7, "rejected_input_ids": [1] * 2, "rejected_labels": [1] * 2}]
    assert row_stats(pairs, [], RunConfig().replace(method="dpo"))[2] == [9, 7]
