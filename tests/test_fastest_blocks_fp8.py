"""Issue 33 on the CPU: checkpointing only the first k blocks (memory.checkpoint_blocks) in the config, the trainer,
the closed-form plan and the budget chooser; FP8 in the plan (closed-form term, and the traced step with torchao's
Float8Linear on fake tensors, skipped without torchao); FP8 "auto" as the default."""
from types import SimpleNamespace

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.memory import estimate
from ftstudio.engine.train import fastest, fp8

GB = 10 ** 9
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}
FASTEST = RunConfig().replace(device="cuda", batch_size=4, seq_len=2048, precision="bf16", compile=True,
                              val_fraction=0.0, fp8="off")


def test_checkpoint_blocks_needs_checkpointing_and_no_offload():
    assert RunConfig().memory.checkpoint_blocks == 0
    with pytest.raises(ConfigError, match="memory.checkpoint_blocks: needs memory.activation_checkpointing on"):
        RunConfig().replace(checkpoint_blocks=4)
    with pytest.raises(ConfigError, match="memory.checkpoint_blocks: with offload_activations"):
        RunConfig().replace(activation_checkpointing=True, offload_activations=True, checkpoint_blocks=4)
    with pytest.raises(ConfigError, match="checkpoint_blocks"):
        RunConfig().replace(activation_checkpointing=True, checkpoint_blocks=-1)


def test_the_plan_grows_by_a_blocks_activations_per_block_left_unchecheckpointed():
    ck = FASTEST.replace(activation_checkpointing=True)
    plans = [estimate(LLAMA_1B, ck.replace(checkpoint_blocks=k), 1, device="cuda:0") for k in (16, 12, 8, 4)]
    full = estimate(LLAMA_1B, ck, 1, device="cuda:0")
    none = estimate(LLAMA_1B, FASTEST, 1, device="cuda:0")
    assert plans[0].peak_allocated == full.peak_allocated                 # 16 of 16: every block
    steps = [b.parts["layers"] - a.parts["layers"] for a, b in zip(plans, plans[1:])]
    assert steps[0] > 0 and steps[0] == steps[1] == steps[2]               # linear in the blocks kept whole
    assert full.peak_allocated < plans[-1].peak_allocated < none.peak_allocated


def test_fp8_lowers_a_compiled_plan_by_its_term_and_leaves_an_eager_one():
    bf16 = estimate(LLAMA_1B, FASTEST, 1, device="cuda:0")
    f8 = estimate(LLAMA_1B, FASTEST.replace(fp8="tensorwise"), 1, device="cuda:0")
    from ftstudio.engine.memory.plan import fp8_saved_less
    from ftstudio.engine.models import shape_from_config
    per_token = fp8_saved_less(shape_from_config(LLAMA_1B), 2)
    assert per_token == 2 * 2048 + 8192 - 2048
    assert bf16.parts["layers"] - f8.parts["layers"] == 4 * 2048 * 16 * per_token
    eager = FASTEST.replace(compile=False)
    assert (estimate(LLAMA_1B, eager.replace(fp8="tensorwise"), 1, device="cuda:0").peak_allocated
            == estimate(LLAMA_1B, eager, 1, device="cuda:0").peak_allocated)   # torchao saves bf16 inputs eagerly
    auto = estimate(LLAMA_1B, FASTEST.replace(fp8="auto"), 1, device="cuda:0")
    assert auto.peak_allocated == bf16.peak_allocated                      # unresolved auto errs high


def test_partial_checkpointing_speed_lies_between_none_and_all():
    cfg = FASTEST
    every = fastest.planned_speed({"activation_checkpointing": True}, cfg, liger=True, layers=16)
    assert every == pytest.approx(fastest.SPEED["checkpointing"][0])
    some = [fastest.planned_speed({"activation_checkpointing": True, "checkpoint_blocks": k}, cfg, liger=True,
                                  layers=16) for k in (12, 8, 4)]
    assert every < some[0] < some[1] < some[2] < 1.0
    cands = fastest.candidates(cfg.replace(grad_accum=1), lowbit=False, layers=16)
    ks = {c.get("checkpoint_blocks") for c in cands if c.get("activation_checkpointing")}
    assert ks == {None, *range(1, 16)}
    assert not any(c.get("checkpoint_blocks") and c.get("offload_activations") for c in cands)
    assert not any(c.get("checkpoint_blocks") for c in fastest.candidates(cfg, lowbit=False, layers=0))


def test_the_chooser_fills_the_memory_left_with_whole_blocks():
    """With the real closed-form plan: between full checkpointing and none, the budget takes the blocks it holds."""
    def plan(mc, run):
        return estimate(mc, run, 1, device="cuda:0")
    cfg = FASTEST.replace(loss="chunked", optimizer_in_backward=True)
    full = plan(LLAMA_1B, cfg.replace(activation_checkpointing=True)).peak_allocated
    per_block = (plan(LLAMA_1B, cfg.replace(activation_checkpointing=True, checkpoint_blocks=15)).peak_allocated
                 - full)
    budget = int(full + 3.5 * per_block)
    fit = fastest.choose(cfg, LLAMA_1B, budget, liger=True, lowbit=False, plan=plan)
    assert fit.leaves == {"activation_checkpointing": True, "checkpoint_blocks": 13}, fit.lines
    assert "activation checkpointing of the first 13 blocks" in fit.lines[0] and "derived" in fit.lines[0]


def test_the_trainer_checkpoints_only_the_first_blocks():
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftstudio.engine.train.offload import enable
    m = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2))
    line = enable(m, RunConfig().replace(activation_checkpointing=True, checkpoint_blocks=2).memory)
    assert [b.gradient_checkpointing for b in m.model.layers] == [True, True, False]
    assert line == "Activation checkpointing: the first 2 of 3 blocks; the last 1 keep their activations"
    m2 = LlamaForCausalLM(m.config)
    assert enable(m2, RunConfig().replace(activation_checkpointing=True).memory).endswith("every block")
    assert all(b.gradient_checkpointing for b in m2.model.layers)
    m3 = LlamaForCausalLM(m.config)               # more blocks asked than the model has: every block, and said
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)   # transformers' deprecated enable is not the one called
        line = enable(m3, RunConfig().replace(activation_checkpointing=True, checkpoint_blocks=9).memory)
    assert line == "Activation checkpointing: every block (checkpoint_blocks 9, and the model has 3 blocks)"
    assert all(b.gradient_checkpointing for b in m3.model.layers)


def test_fp8_auto_is_the_default_and_silent_on_the_cpu():
    assert RunConfig().memory.fp8 == "auto"
    assert fp8.decide("auto", device="cpu", capability=None, compiled=False, params=8e9, torchao=True) == (None, "")


def test_the_traced_step_converts_the_blocks_to_fp8():
    pytest.importorskip("torchao.float8")
    from ftstudio.engine.memory.tracer import StepChoices, trace_step
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512)
    bf16 = trace_step(cfg, StepChoices(batch=2, seq_len=256, precision="bf16", compiled=True))
    f8 = trace_step(cfg, StepChoices(batch=2, seq_len=256, precision="bf16", compiled=True, fp8="tensorwise"))
    assert f8.train_peak < bf16.train_peak          # the projections' inputs saved as their fp8 casts
    assert f8.weights == bf16.weights


def test_a_run_with_some_blocks_checkpointed_trains_and_says_which(tiny_llama, tmp_path):
    from test_trainer import lm_config, run, write_text_data

    from ftstudio.core.events import LogLine, RunFinished
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=3,
                    activation_checkpointing=True, checkpoint_blocks=1, eval_every=0, val_fraction=0.0)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    said = [e.message for e in events if isinstance(e, LogLine) and e.message.startswith("Activation checkpointing")]
    assert said and said[0].startswith("Activation checkpointing: the first 1 of ") and "keep their activations" in said[0]


def test_fp8_from_auto_is_a_choice_and_the_step_in_backward_turns_it_off():
    """FP8 alone is planned faster; with the step inside backward it measured slower than bf16 (SPEED)."""
    cfg = FASTEST.replace(fp8="tensorwise")
    assert {c.get("fp8") for c in fastest.candidates(cfg, lowbit=False, fp8_optional=True)} == {None, "off"}
    assert all("fp8" not in c for c in fastest.candidates(cfg, lowbit=False))      # a recipe the user set stays
    off = fastest.planned_speed({"fp8": "off"}, cfg, liger=True)
    assert off == pytest.approx(1 / fastest.SPEED["fp8"][0])
    ib = {"optimizer_in_backward": True}
    assert (fastest.planned_speed({**ib, "fp8": "off"}, cfg, liger=True)
            > fastest.planned_speed(ib, cfg, liger=True))

    def plan(mc, run):       # GB: only the step inside backward gets under 7.2 (FP8 saves 0.3)
        m = run.memory
        gb = (8 - 2 * m.optimizer_in_backward + (1 if m.activation_checkpointing else 4) - 0.3 * (m.fp8 != "off")
              + (0.1 if m.loss == "chunked" else 1))
        return SimpleNamespace(peak_allocated=gb * GB, total=gb * GB + GB)
    budget = int(7.2 * GB)
    fit = fastest.choose(cfg, LLAMA_1B, budget, liger=True, lowbit=False, plan=plan, fp8_optional=True)
    assert fit.leaves.get("fp8") == "off" and fit.leaves.get("optimizer_in_backward"), fit.lines
    assert "FP8 off" in fit.lines[0] and "derived" in fit.lines[0]
    kept = fastest.choose(cfg, LLAMA_1B, budget, liger=True, lowbit=False, plan=plan)
    assert "fp8" not in kept.leaves


def test_fit_memory_lets_the_choice_turn_auto_fp8_off_and_keeps_auto_otherwise(monkeypatch):
    from ftstudio.engine.train import fast_path
    seen = {}

    def fit(cfg, device, mc, report, **kw):
        seen.update(kw, planned=cfg.memory.fp8)
        return cfg.replace(fp8=chosen)
    monkeypatch.setattr(fast_path, "fit_memory", fit)
    monkeypatch.setattr(fast_path, "fp8_auto", lambda cfg, device, params: "tensorwise")
    prepared = SimpleNamespace(train=[{"input_ids": [1] * 64}], val=[], task="causal-lm", format="text",
                               collate=SimpleNamespace(packed=False))
    info = SimpleNamespace(params=1.2e9, config=LLAMA_1B)
    sched = lambda rows, general: SimpleNamespace(total_steps=900)  # noqa: E731
    run = RunConfig().replace(device="cuda:0", seq_len=64, batch_size=1, compile=True, gpu_memory=10.0)
    for chosen, after in (("tensorwise", "auto"), ("off", "off")):
        cfg, _ = fast_path.apply(run, "cuda:0", prepared, info, sched, lambda ev: None)
        assert seen["planned"] == "tensorwise" and seen["fp8_optional"] is True
        assert cfg.memory.fp8 == after

