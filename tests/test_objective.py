"""The objective a fine-tune optimises is the one it claims: the loss of a step is the mean over every trained
token of the step, whatever the micro-batching (so batch × grad_accum equals one large batch)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from ftstudio.core.config import RunConfig
from ftstudio.core.events import RunFinished, StepMetrics
from ftstudio.engine.train import Trainer

# Four rows of very different lengths: a mean of per-micro-batch means weights the short rows' tokens far more.
ROWS = [
    {"prompt": "Q: hi\nA:", "completion": " yes"},
    {"prompt": "Q: name the parts of the agreement that deal with payment and notice\nA:",
     "completion": " the party shall pay the damages within ten days of the notice, and the notice of payment "
                   "is due in writing to the other party at the address in the agreement, " * 3},
    {"prompt": "Q: ok?\nA:", "completion": " no"},
    {"prompt": "Q: what does the confidentiality clause say\nA:",
     "completion": " confidential information of the party shall not be shared with anyone for one year" * 2},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_step(model, data, out, name, **kw):
    cfg = RunConfig().replace(source=str(model), dataset=str(data), val_dataset=str(data), output=str(out),
                              run_name=name, max_steps=1, optimizer="sgd", lr=0.5, schedule="constant",
                              warmup_steps=0, grad_clip=0.0, seq_len=256, device="cpu", precision="fp32", seed=1,
                              eval_every=0, weight_decay=0.0, **kw)
    events = []
    result = Trainer(cfg, events.append).run()
    assert isinstance(result, RunFinished), result
    loss = [e.loss for e in events if isinstance(e, StepMetrics)][0]
    return load_file(out / name / "final" / "model.safetensors"), loss


def _update_gap(a: dict, b: dict, base: dict) -> float:
    num = sum(float(((a[k] - b[k]).double() ** 2).sum()) for k in base)
    den = sum(float(((a[k] - base[k]).double() ** 2).sum()) for k in base)
    return (num / den) ** 0.5


def test_grad_accum_equals_one_large_batch_on_rows_of_different_lengths(tiny_llama, tmp_path):
    data = _write(tmp_path / "d.jsonl", ROWS)
    base = load_file(tiny_llama / "model.safetensors")
    big, big_loss = _one_step(tiny_llama, data, tmp_path / "runs", "big", batch_size=4, grad_accum=1)
    acc, acc_loss = _one_step(tiny_llama, data, tmp_path / "runs", "acc", batch_size=2, grad_accum=2)
    one, one_loss = _one_step(tiny_llama, data, tmp_path / "runs", "one", batch_size=1, grad_accum=4)
    assert _update_gap(big, acc, base) <= 1e-5
    assert _update_gap(big, one, base) <= 1e-5
    assert acc_loss == pytest.approx(big_loss, rel=1e-5) and one_loss == pytest.approx(big_loss, rel=1e-5)


def test_the_step_loss_is_the_token_mean(tiny_llama, tmp_path):
    """The reported loss equals the model's own mean loss over all four rows at θ0 (one forward, no batching)."""
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.data import prepare_data
    from ftstudio.engine.models import load_tokenizer

    data = _write(tmp_path / "d.jsonl", ROWS)
    _, loss = _one_step(tiny_llama, data, tmp_path / "runs", "r", batch_size=2, grad_accum=2)
    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(data), val_dataset=str(data), seq_len=256)
    prepared = prepare_data(cfg.data, load_tokenizer(cfg.model), task="causal-lm", seed=0)
    batch = prepared.collate(prepared.train)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        expected = float(model(**batch).loss)  # HF: one mean over every predicted token of the four rows
    assert loss == pytest.approx(expected, rel=1e-5)


# -- loss paths agree with the model: logit transforms, and evaluation on the training path ---------------------
def _tiny(kind):
    import transformers

    common = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64)
    cfg = {"gemma2": lambda: transformers.Gemma2Config(head_dim=16, final_logit_softcapping=2.0, **common),
           "cohere": lambda: transformers.CohereConfig(logit_scale=0.37, **common),
           "granite": lambda: transformers.GraniteConfig(logits_scaling=3.0, **common)}[kind]()
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind", ["gemma2", "cohere", "granite"])
def test_chunked_loss_keeps_the_models_logit_transforms(kind):
    from ftstudio.engine.train.loss import training_loss as causal_lm_loss

    model = _tiny(kind)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        own = float(model(**batch).loss)
        chunked = float(causal_lm_loss(model, batch, loss="chunked"))
    assert chunked == pytest.approx(own, rel=1e-5)


def test_evaluation_uses_the_training_loss_path(tiny_llama, tmp_path, monkeypatch):
    import ftstudio.engine.train.loss as ml

    data = _write(tmp_path / "d.jsonl", ROWS)
    calls = {"eval": 0}
    real = ml.causal_lm_loss

    def counting(model, batch, *, chunked):
        if not model.training:
            calls["eval"] += 1
        return real(model, batch, chunked=chunked)

    monkeypatch.setattr(ml, "causal_lm_loss", counting)
    _one_step(tiny_llama, data, tmp_path / "runs", "r", batch_size=2, grad_accum=1, loss="chunked")
    assert calls["eval"] > 0   # the final evaluation went through the chunked loss, not the model's full logits


def test_the_plan_counts_the_evaluation_phase():
    from ftstudio.engine.memory import estimate

    shape = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 128_000}
    full = estimate(shape, RunConfig().replace(device="cuda", batch_size=8, seq_len=1024))
    sliced = estimate(shape, RunConfig().replace(device="cuda", batch_size=8, seq_len=1024, loss="chunked"))
    assert "phase:evaluation" in full.parts
    assert sliced.parts["phase:evaluation"] < full.parts["phase:evaluation"] / 4   # slices, not the whole logits


@pytest.mark.timeout(240)
def test_two_gloo_ranks_equal_one_process_on_rows_of_different_lengths(tiny_llama, tmp_path):
    """Each rank holds its tokens' share of the step's mean (the token count all-reduced on the CPU group)."""
    from ftstudio.engine import run as train

    data = _write(tmp_path / "d.jsonl", ROWS)
    base = load_file(tiny_llama / "model.safetensors")
    one, one_loss = _one_step(tiny_llama, data, tmp_path / "runs", "one", batch_size=4)
    cfg = RunConfig().replace(source=str(tiny_llama), dataset=str(data), val_dataset=str(data),
                              output=str(tmp_path / "runs"), run_name="two", max_steps=1, optimizer="sgd", lr=0.5,
                              schedule="constant", warmup_steps=0, grad_clip=0.0, seq_len=256, device="cpu",
                              precision="fp32", seed=1, eval_every=0, weight_decay=0.0, batch_size=2, gpus=[0, 1])
    events = []
    result = train(cfg, events.append)
    assert isinstance(result, RunFinished), result
    two = load_file(tmp_path / "runs" / "two" / "final" / "model.safetensors")
    assert _update_gap(one, two, base) <= 1e-5
    assert [e.loss for e in events if isinstance(e, StepMetrics)][0] == pytest.approx(one_loss, rel=1e-5)
