"""Forgetting remedies: L2-SP and EWC penalties against their formulas, drift, mixing, the general set, retention."""
import json
import math

import pytest
import torch

from ftstudio.core.config import OptimConfig, RunConfig
from ftstudio.core.errors import ConfigError, DataError
from ftstudio.engine.train.optim import build_optimizer
from ftstudio.engine.forgetting import (Regularizer, build_regularizer, estimate_fisher, general_batches,
                                        general_count, general_examples, general_text_path, load_general_texts,
                                        mix_examples, retention_loss)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1))


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def test_ewc_penalty_and_gradient_match_a_hand_computation():
    model = _tiny_net()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    fisher = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    reg = Regularizer(model, l2sp=0.3, ewc=2.0, fisher=fisher)
    _perturb(model)
    # By hand: Σ_i [λ_l2sp/2 (θ_i−θ0_i)² + λ_ewc/2 F_i (θ_i−θ0_i)²], element by element in plain Python.
    expected = 0.0
    for n, p in model.named_parameters():
        for t, t0, f in zip(p.detach().flatten().tolist(), theta0[n].flatten().tolist(), fisher[n].flatten().tolist()):
            expected += 0.3 / 2 * (t - t0) ** 2 + 2.0 / 2 * f * (t - t0) ** 2
    penalty = reg.penalty(model)
    assert penalty.item() == pytest.approx(expected, rel=1e-6)
    penalty.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, (0.3 + 2.0 * fisher[n]) * (p.detach() - theta0[n]))


def test_l2sp_penalty_is_half_lambda_squared_distance_and_zero_at_theta0():
    model = _tiny_net()
    reg = Regularizer(model, l2sp=0.5)
    assert reg.penalty(model).item() == 0.0
    theta0 = [p.detach().clone() for p in model.parameters()]
    _perturb(model)
    sq = sum(float((p.detach() - t0).square().sum()) for p, t0 in zip(model.parameters(), theta0))
    assert reg.penalty(model).item() == pytest.approx(0.25 * sq, rel=1e-6)


def test_drift_only_regularizer_penalty_is_a_backwardable_zero():
    model = _tiny_net()
    reg = Regularizer(model)
    assert not reg.active
    p = reg.penalty(model)
    assert p.item() == 0.0
    p.backward()  # the trainer calls backward on it unconditionally


def test_anchor_places_and_nbytes():
    model = _tiny_net()
    n = sum(p.numel() for p in model.parameters())
    assert Regularizer(model, l2sp=1.0, anchor="gpu").nbytes == 4 * n
    bf16 = Regularizer(model, l2sp=1.0, anchor="bf16")
    assert bf16.nbytes == 2 * n and all(t.dtype == torch.bfloat16 for t in bf16.theta0.values())
    cpu = Regularizer(model, l2sp=1.0, anchor="cpu")
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in cpu.theta0.values())
    fisher = {k: torch.ones_like(p) for k, p in model.named_parameters()}
    assert Regularizer(model, ewc=1.0, fisher=fisher, anchor="bf16").nbytes == 4 * n  # θ0 + F, 2 B each
    with pytest.raises(ConfigError, match="l2sp_anchor"):
        Regularizer(model, l2sp=1.0, anchor="disk")


def test_drift_per_layer_matches_hand_value(tiny_llama):
    model, _ = _load(tiny_llama)
    reg = Regularizer(model)
    assert all(v == 0.0 for v in reg.drift(model).values())
    names = dict(reg.groups)["layer.1"]
    w = dict(model.named_parameters())[names[0]]
    norm0 = math.sqrt(sum(float(dict(model.named_parameters())[n].detach().square().sum()) for n in names))
    with torch.no_grad():
        w.add_(0.01)
    drift = reg.drift(model)
    assert drift["layer.1"] == pytest.approx(0.01 * math.sqrt(w.numel()) / norm0, rel=1e-4)
    assert drift["layer.0"] == 0.0 and drift["embeddings"] == 0.0 and drift["head"] == 0.0
    event = reg.drift_metrics(model, step=7)
    assert event.step == 7 and 0 < event.total < drift["layer.1"]


def _train(model, reg, steps=12, lr=5e-3):
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0), device_type="cpu")
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(8, model.config.vocab_size, (4, 12), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        if reg is not None:
            loss = loss + reg.penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_l2sp_shrinks_drift(tiny_llama):
    """Same data, same seed: with L2-SP every layer group ends closer to θ0 than without."""
    plain, _ = _load(tiny_llama)
    monitor = Regularizer(plain)
    _train(plain, None)
    free = monitor.drift_metrics(plain, 0)

    anchored, _ = _load(tiny_llama)
    reg = Regularizer(anchored, l2sp=5.0)
    _train(anchored, reg)
    pulled = reg.drift_metrics(anchored, 0)
    assert pulled.total < 0.7 * free.total
    for g in free.layers:
        assert pulled.layers[g] < free.layers[g], g


def test_fisher_is_mean_squared_per_example_gradient_scaled_to_mean_one(tiny_llama):
    model, tok = _load(tiny_llama)
    batches = general_batches(tok, seq_len=16, batch_size=2, limit=2)
    fisher = estimate_fisher(model, batches)
    assert all(p.grad is None for p in model.parameters())  # estimation leaves no gradients behind
    # By hand: square each single row's gradient, average over the rows.
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    rows = 0
    for b in batches:
        for i in range(len(b["input_ids"])):
            model.zero_grad()
            model(**{k: v[i:i + 1] for k, v in b.items()}).loss.backward()
            for n, p in model.named_parameters():
                acc[n] += p.grad.square()
            rows += 1
    mean = sum(float(a.sum()) for a in acc.values()) / (rows * sum(a.numel() for a in acc.values()))
    for n in acc:
        torch.testing.assert_close(fisher[n], acc[n] / rows / mean, rtol=1e-4, atol=1e-8)
    total = sum(float(f.sum()) for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    assert total == pytest.approx(1.0)


def test_build_regularizer_from_config(tiny_llama):
    model, tok = _load(tiny_llama)
    assert build_regularizer(model, RunConfig()) is None
    assert not build_regularizer(model, RunConfig().replace(drift_every=5)).active
    with pytest.raises(ConfigError, match="regularize.ewc"):
        build_regularizer(model, RunConfig().replace(ewc=1.0))
    seen = []
    reg = build_regularizer(model, RunConfig().replace(ewc=1.0, ewc_batches=2, l2sp_anchor="bf16"),
                            general_batches(tok, 16, 2), progress=lambda i, n: seen.append((i, n)))
    assert reg.active and reg.fisher is not None and seen[-1] == (4, 4)  # 2 batches × 2 rows, one by one


# -- general set, mixing, retention --------------------------------------------------------------
def test_bundled_general_set_is_varied_and_sized():
    path = general_text_path()
    assert path.exists() and 50_000 <= path.stat().st_size <= 100_000
    texts = load_general_texts()
    assert 200 <= len(texts) <= 400 and len(set(texts)) == len(texts)
    topics = {json.loads(line)["topic"] for line in path.read_text().splitlines()}
    assert len(topics) >= 8
    assert (path.parent / "README.md").read_text().count("CC0") >= 1


def test_user_general_files_and_their_errors(tmp_path):
    txt = tmp_path / "g.txt"
    txt.write_text("First paragraph\nstill first.\n\n\nSecond one.\n", encoding="utf-8")
    assert load_general_texts(txt) == ["First paragraph still first.", "Second one."]
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_general_texts(bad)
    assert [(p.row, p.field) for p in e.value.problems] == [(2, "text"), (3, None)]
    assert str(bad) in str(e.value)
    with pytest.raises(DataError, match="not found"):
        load_general_texts(tmp_path / "missing.txt")


def test_general_examples_are_causal_lm_rows(tiny_llama, tmp_path):
    _, tok = _load(tiny_llama)
    examples = general_examples(tok, seq_len=16)
    assert len(examples) >= 220  # long paragraphs become several rows
    for e in examples:
        assert e["labels"] == e["input_ids"] and 2 <= len(e["input_ids"]) <= 16
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["the cat"] * 40), encoding="utf-8")
    rows = general_examples(tok, seq_len=32, path=long)
    assert [len(r["input_ids"]) for r in rows] == [32, 32, 17]  # 80 words + </s>, nothing dropped


@pytest.mark.parametrize("fraction,batch", [(0.25, 8), (0.1, 4), (0.1, 16), (0.5, 1), (0.0, 4)])
def test_mixing_puts_general_rows_in_batches_at_the_fraction(fraction, batch):
    task = [{"id": f"t{i}"} for i in range(203)]
    general = [{"id": f"g{i}"} for i in range(17)]
    batches = mix_examples(task, general, fraction, batch, seed=3)
    assert all(len(b) == batch for b in batches[:-1]) and len(batches[-1]) <= batch
    task_seen = [r["id"] for b in batches for r in b if r["id"].startswith("t")]
    assert sorted(task_seen) == sorted(t["id"] for t in task)  # every task row exactly once
    counts = [sum(r["id"].startswith("g") for r in b) for b in batches]
    if float(fraction * batch).is_integer():
        assert all(c == fraction * batch for c in counts[:-1])  # exactly round(f·B) per batch
    else:
        assert all(c in (math.floor(fraction * batch), math.ceil(fraction * batch)) for c in counts[:-1])
    rows = sum(len(b) for b in batches)
    assert abs(sum(counts) - fraction * rows) <= 1.5  # the share of general rows is the fraction
    assert batches == mix_examples(task, general, fraction, batch, seed=3)  # same seed, same batches
    assert general_count(0, batch, fraction) + general_count(1, batch, fraction) == round(2 * fraction * batch)


def test_mixing_rejects_bad_input():
    with pytest.raises(ConfigError, match="mix_fraction"):
        mix_examples([1], [2], 1.0, 4, 0)
    with pytest.raises(ConfigError, match="no examples"):
        mix_examples([1], [], 0.1, 4, 0)


def test_retention_loss_is_token_weighted_and_batching_independent(tiny_llama):
    model, tok = _load(tiny_llama)
    one = general_batches(tok, 24, batch_size=1, limit=6)
    three = general_batches(tok, 24, batch_size=3, limit=2)  # the same 6 rows, batched by 3
    loss1, ppl1 = retention_loss(model, one)
    loss3, _ = retention_loss(model, three)
    assert loss1 == pytest.approx(loss3, rel=1e-5) and ppl1 == pytest.approx(math.exp(loss1))
    # By hand: summed cross-entropy over predicted tokens / their count.
    total, count = 0.0, 0
    with torch.no_grad():
        for b in one:
            logits = model(input_ids=b["input_ids"]).logits[0, :-1]
            target = b["labels"][0, 1:]
            total += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            count += len(target)
    assert loss1 == pytest.approx(total / count, rel=1e-5)
    model.train()
    retention_loss(model, one)
    assert model.training


def test_penalty_keeps_no_copy_of_the_weights_for_backward():
    """The penalty's graph saves only the parameters (no θ−θ0 temporaries): its memory is θ0 and F alone."""
    model = _tiny_net()
    reg = Regularizer(model, l2sp=1.0)
    _perturb(model)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.data_ptr()) or t, lambda t: t):
        penalty = reg.penalty(model)
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    assert saved and set(saved) <= param_ptrs
    penalty.backward()
