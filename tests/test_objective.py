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
