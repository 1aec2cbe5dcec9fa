"""The loop end to end on tiny models: it learns, it reports, it stops, and a resumed run continues exactly."""
import json

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.events import CheckpointSaved, EvalMetrics, RunFailed, RunFinished, RunStarted, StepMetrics

TEXTS = ["the contract shall terminate on notice", "the party shall pay the damages",
         "confidential information of the party", "the agreement is good for one year",
         "a notice of payment is due in ten days", "liability of the party is limited",
         "the user asked a question and the assistant gave an answer", "the cat and the dog are good"]


def write_text_data(path, n=48):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": TEXTS[i % len(TEXTS)] + f" {i % 10}"}) + "\n")
    return path


def write_class_data(path, n=60):
    rows = [("the party shall terminate the agreement on notice", "termination"),
            ("confidential information shall not be shared", "confidentiality"),
            ("liability for damages is limited", "liability")]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            text, label = rows[i % 3]
            fh.write(json.dumps({"text": f"{text} {i}", "label": label}) + "\n")
    return path


def run(cfg, control=None, resume_from=None):
    events = []
    result = __import__("ftstudio.engine.train", fromlist=["Trainer"]).Trainer(
        cfg, events.append, control, resume_from=resume_from).run()
    return result, events


def lm_config(model, data, out, **kw):
    base = dict(source=str(model), dataset=str(data), output=str(out), run_name="r", max_steps=8, batch_size=4,
                lr=5e-3, seq_len=32, eval_every=4, val_fraction=0.2, device="cpu", precision="fp32", seed=3)
    base.update(kw)
    return RunConfig().replace(**base)


def test_causal_lm_run_learns_reports_and_exports(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=16)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    steps = [e for e in events if isinstance(e, StepMetrics)]
    assert [e.step for e in steps] == list(range(1, 17))
    assert steps[-1].loss < steps[0].loss * 0.8
    assert all(e.tokens_per_s > 0 and e.grad_norm > 0 for e in steps)
    evals = [e for e in events if isinstance(e, EvalMetrics)]
    assert len(evals) >= 3 and evals[-1].perplexity is not None
    run_dir = tmp_path / "runs" / "r"
    assert (run_dir / "config.yaml").exists()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] in ("log", "run_started") and lines[-1]["event"] == "finished"
    assert any(x["event"] == "step" and x["step"] == 16 for x in lines)
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(result.final_model)
    assert sum(p.numel() for p in m.parameters()) == next(e for e in events if isinstance(e, RunStarted)).params


def _final_weights(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_resume_gives_exactly_the_weights_of_a_straight_run(kind, tiny_llama, tiny_bert, tmp_path):
    if kind == "lm":
        cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", grad_accum=2)
    else:  # BERT has dropout on: the RNG state must be restored too
        cfg = lm_config(tiny_bert, write_class_data(tmp_path / "c.jsonl"), tmp_path / "runs", lr=1e-3)
    straight, _ = run(cfg.replace(run_name="straight"))
    assert isinstance(straight, RunFinished)

    control = Control()

    def stop_at_4(event):
        if isinstance(event, StepMetrics) and event.step == 4:
            control.request_stop()
    half = __import__("ftstudio.engine.train", fromlist=["Trainer"]).Trainer(
        cfg.replace(run_name="halves"), stop_at_4, control).run()
    assert half.status == "stopped" and half.steps == 4
    run_dir = tmp_path / "runs" / "halves"
    assert (run_dir / "checkpoints" / "step-4").is_dir()
    resumed, events = run(cfg.replace(run_name="halves"), resume_from=run_dir)
    assert isinstance(resumed, RunFinished) and resumed.steps == 8, resumed
    assert next(e for e in events if isinstance(e, RunStarted)).resumed_from_step == 4
    a, b = _final_weights(tmp_path / "runs" / "straight"), _final_weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_stop_is_honoured_within_one_step(tiny_llama, tmp_path):
    control = Control()
    seen = []

    def reporter(event):
        seen.append(event)
        if isinstance(event, StepMetrics) and event.step == 2:
            control.request_stop()
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=50)
    result = __import__("ftstudio.engine.train", fromlist=["Trainer"]).Trainer(cfg, reporter, control).run()
    assert result.status == "stopped" and result.steps == 2
    assert any(isinstance(e, CheckpointSaved) and e.step == 2 for e in seen)


def test_bad_data_fails_cleanly_and_writes_nothing(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    out = tmp_path / "runs"
    result, events = run(lm_config(tiny_llama, bad, out))
    assert isinstance(result, RunFailed)
    assert "bad.jsonl" in result.reason and "2" in result.reason
    assert not out.exists()


def test_runs_started_in_the_same_second_get_their_own_folders(tiny_llama, tmp_path):
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=1,
                    val_fraction=0.0).replace(run_name=None)
    first, _ = run(cfg)
    second, _ = run(cfg)
    assert isinstance(first, RunFinished) and isinstance(second, RunFinished)
    assert first.output_dir != second.output_dir
    again, _ = run(cfg.replace(run_name=first.output_dir.rsplit("/", 1)[-1]))
    assert isinstance(again, RunFailed) and "already holds a run" in again.reason  # a named run is never mixed


def test_attention_choice_is_applied_and_flex_is_refused_on_the_cpu(tiny_llama, tmp_path):
    """model.attention reaches the model; flex_attention (no CPU backward in torch) fails before any step with
    the field named. On a GPU, auto picks it for packed rows (packed-row equivalence: test_data_pipeline)."""
    from ftstudio.core.events import RunFailed
    data = write_text_data(tmp_path / "d.jsonl")
    cfg = lm_config(tiny_llama, data, tmp_path / "e", max_steps=2, packing=True, attention="eager")
    result, _ = run(cfg)
    assert isinstance(result, RunFinished), result
    cfg = lm_config(tiny_llama, data, tmp_path / "f", max_steps=2, packing=True, attention="flex_attention")
    result, events = run(cfg)
    assert isinstance(result, RunFailed) and "model.attention" in result.reason and "cpu" in result.reason
    assert not [e for e in events if isinstance(e, StepMetrics)]
