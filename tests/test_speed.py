"""Speed/size options on the CPU: block compile (structure), activation offload, optimizer step in backward,
bf16 AdamW with Kahan compensation / stochastic rounding, presets."""
import copy

import pytest
import torch

from ftstudio.core.config import OptimConfig, RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.train import compiling, in_backward, loss as lm_loss, offload as offload_room
from ftstudio.engine.train.optim import CompensatedAdamW, build_optimizer, stochastic_round_bf16


def _model(path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    m.config.use_cache = False
    return m


def _batch(vocab, rows=2, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, vocab, (rows, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def _train(model, opt, steps, *, in_backward=False, clip=0.0, offload=False, seed=0):
    params = list(model.parameters())
    for i in range(steps):
        b = _batch(model.config.vocab_size, seed=seed + i)
        with offload_room.offload_context(offload, "cpu"):
            loss = lm_loss.training_loss(model, b, loss="chunked")
        loss.backward()
        if not in_backward:
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return model


def test_compile_blocks_compiles_each_block_in_place(tiny_llama):
    m = _model(tiny_llama)
    m.config.use_cache = True
    keys = list(m.state_dict())
    batch = _batch(m.config.vocab_size)
    with torch.no_grad():
        before = m(**batch).loss
    n = compiling.compile_blocks(m, backend="eager")       # structure only: inductor is CUDA-only in the trainer
    assert n == len(m.model.layers) == 2
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in m.model.layers)
    assert list(m.state_dict()) == keys                # no "_orig_mod." prefix: checkpoints stay loadable
    assert m.config.use_cache is False                 # no KV cache keyed by layer index
    with torch.no_grad():
        assert torch.allclose(m(**batch).loss, before)
    assert compiling.compile_blocks(torch.nn.Linear(3, 3)) == 0


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_optimizer_in_backward_gives_the_weights_of_a_normal_step(tiny_llama, kind):
    cfg = OptimConfig(optimizer=kind, lr=1e-2, weight_decay=0.1, grad_clip=0.0)
    ref = _model(tiny_llama)
    ib = copy.deepcopy(ref)
    _train(ref, build_optimizer(ref, cfg, device_type="cpu"), 3)
    opt = build_optimizer(ib, cfg, device_type="cpu", in_backward=True)
    assert isinstance(opt, in_backward.OptimizerInBackward)
    _train(ib, opt, 3, in_backward=True)
    assert all(p.grad is None for p in ib.parameters())      # gradients freed as they were used
    for (n, a), b in zip(ref.named_parameters(), ib.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), n
    moved = sum(float((a - b).abs().sum()) for a, b in zip(ref.parameters(), _model(tiny_llama).parameters()))
    assert moved > 0


def test_in_backward_norm_clip_state_dict_and_scheduler(tiny_llama):
    from ftstudio.core.config import ScheduleConfig
    from ftstudio.engine.train.schedule import build_scheduler
    m = _model(tiny_llama)
    ref = copy.deepcopy(m)
    cfg = OptimConfig(optimizer="adamw", lr=1e-3, grad_clip=0.0)
    opt = build_optimizer(m, cfg, device_type="cpu", in_backward=True)
    sched = build_scheduler(opt, 10, ScheduleConfig(warmup_steps=2))
    loss = lm_loss.training_loss(ref, _batch(ref.config.vocab_size), loss="full")
    loss.backward()
    want = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), float("inf"))
    lm_loss.training_loss(m, _batch(m.config.vocab_size), loss="full").backward()
    assert torch.allclose(opt.grad_norm(), want, rtol=1e-4)            # the global norm, measured in backward
    opt.step()
    sched.step()
    assert all(abs(float(g["lr"]) - 1e-3) < 1e-12 for g in opt.param_groups)   # the scheduler reaches every one
    state = opt.state_dict()
    other = build_optimizer(copy.deepcopy(m), cfg, device_type="cpu", in_backward=True)
    other.load_state_dict(state)
    p0 = next(iter(other._opts))
    assert torch.equal(other.state[p0]["exp_avg"], next(iter(opt.state.values()))["exp_avg"])
    with pytest.raises(ConfigError):
        other.load_state_dict({"state": {}, "param_groups": []})
    # per-tensor clipping: every gradient is cut to the max norm before its step (SGD without momentum shows it)
    clipped = _model(tiny_llama)
    start = [p.detach().clone() for p in clipped.parameters()]
    opt = build_optimizer(clipped, OptimConfig(optimizer="sgd", lr=1.0, beta1=0.0, weight_decay=0.0,
                                               grad_clip=1e-3), device_type="cpu", in_backward=True)
    lm_loss.training_loss(clipped, _batch(clipped.config.vocab_size), loss="full").backward()
    for p, p0 in zip(clipped.parameters(), start):
        assert float((p - p0).norm()) <= 1e-3 * 1.001


def test_in_backward_zeroes_a_non_finite_gradient_and_reports_it():
    lin = torch.nn.Linear(4, 2)
    w0 = lin.weight.detach().clone()
    opt = in_backward.OptimizerInBackward([{"params": list(lin.parameters()), "lr": 0.1}],
                                    lambda g: torch.optim.SGD(g, lr=0.1))
    (lin(torch.ones(1, 4)) * float("inf")).sum().backward()
    assert not torch.isfinite(opt.grad_norm())
    assert torch.equal(lin.weight, w0)
    in_backward.check_in_backward("bf16-mixed")
    with pytest.raises(ConfigError, match="fp16"):
        in_backward.check_in_backward("fp16-mixed")


def test_offload_trains_identically_and_moves_block_inputs_to_cpu(tiny_llama):
    cfg = OptimConfig(optimizer="adamw", lr=1e-2)
    ref = _model(tiny_llama)
    off = copy.deepcopy(ref)
    ref.gradient_checkpointing_enable(gradient_checkpointing_kwargs=offload_room.checkpoint_kwargs(False))
    off.gradient_checkpointing_enable(gradient_checkpointing_kwargs=offload_room.checkpoint_kwargs(True))
    _train(ref, build_optimizer(ref, cfg, device_type="cpu"), 2)
    _train(off, build_optimizer(off, cfg, device_type="cpu"), 2, offload=True)
    for a, b in zip(ref.parameters(), off.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # The reentrant checkpoint saves each block's input through the saved-tensor hooks that offload uses.
    packed = []
    hidden = off.config.hidden_size
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.shape) or t, lambda t: t):
        lm_loss.training_loss(off, _batch(off.config.vocab_size), loss="chunked").backward()
    block_inputs = [s for s in packed if tuple(s) == (2, 16, hidden)]
    assert len(block_inputs) >= len(off.model.layers)
    assert isinstance(offload_room.offload_context(False), type(offload_room.offload_context(False)))


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours():
    x = torch.full((200_000,), 1.0 + 2 ** -10)            # a quarter of the way from 1 to the next bf16 (1+2^-7... )
    r = stochastic_round_bf16(x).float()
    lo, hi = 1.0, 1.0 + 2 ** -7
    assert set(torch.unique(r).tolist()) <= {lo, hi}
    assert abs(float(r.mean()) - float(x[0])) < 2e-5
    neg = stochastic_round_bf16(-x).float()
    assert abs(float(neg.mean()) + float(x[0])) < 2e-5


def _track_error(rounding, steps=300, lr=1e-4):
    torch.manual_seed(0)
    target = torch.randn(512, 64)
    w32 = torch.nn.Parameter(torch.randn(512, 64) * 0.5 + 1.0)
    wbf = torch.nn.Parameter(w32.detach().to(torch.bfloat16))
    ref = torch.optim.AdamW([w32], lr=lr, weight_decay=0.0)
    opt = CompensatedAdamW([wbf], lr=lr, weight_decay=0.0, rounding=rounding)
    for _ in range(steps):
        for w, o in ((w32, ref), (wbf, opt)):
            w.grad = (w.detach().float() - target).to(w.dtype)
            o.step()
    return float((wbf.float() - w32.detach()).abs().mean()), float((w32.detach() - (torch.randn(1) * 0)).abs().mean())


def test_compensated_bf16_adamw_tracks_fp32_adamw_better_than_naive_bf16():
    naive, _ = _track_error("nearest")
    kahan, _ = _track_error("kahan")
    sr, _ = _track_error("stochastic")
    # lr 1e-4 on weights near 1: each update is below bf16's half-spacing, so naive bf16 barely moves
    assert kahan < naive / 10
    assert sr < naive / 3
    assert kahan < 2 ** -9                        # within bf16's rounding of the fp32 weights (≈ 1)


def test_bf16_weights_get_the_compensated_optimizer(tiny_llama):
    m = _model(tiny_llama, dtype=torch.bfloat16)
    opt = build_optimizer(m, OptimConfig(optimizer="adamw"), device_type="cpu")
    assert isinstance(opt, CompensatedAdamW) and opt.rounding == "stochastic"      # the default: no buffer
    _train(m, opt, 1)
    assert "compensation" not in opt.state[next(m.parameters())]
    opt = build_optimizer(m, OptimConfig(optimizer="adamw", bf16_rounding="kahan"), device_type="cpu")
    assert opt.rounding == "kahan"
    _train(m, opt, 1)
    p = next(m.parameters())
    assert opt.state[p]["compensation"].dtype == torch.bfloat16
    assert isinstance(build_optimizer(_model(tiny_llama), OptimConfig(), device_type="cpu"), torch.optim.AdamW)
    assert type(build_optimizer(m, OptimConfig(optimizer="adamw8bit"), device_type="cpu")).__name__ == \
        "Fp8StateAdamW"                        # 8-bit states run on the CPU too (our FP8-state AdamW's torch path)


def test_presets_are_valid_run_configs_and_apply_by_prefix():
    from ftstudio.core.presets import PRESETS, DESCRIPTIONS, apply_preset, get_preset, matching_preset
    base = RunConfig().replace(source="some/model", dataset="data.jsonl", batch_size=4)
    for name in PRESETS:
        cfg = apply_preset(base, name)                  # validates every leaf through RunConfig
        assert cfg.model.source == "some/model" and cfg.train.batch_size == 4
        assert matching_preset(cfg) == name
        assert DESCRIPTIONS[name]
    seed = apply_preset(base, "Safe defaults (the seed)")
    assert (seed.optim.lr, seed.schedule.schedule, seed.schedule.warmup_ratio, seed.train.epochs) == \
        (2e-5, "cosine", 0.05, 2.0)
    ref = apply_preset(apply_preset(base, "largest"), "Reference (the seed's 16N recipe)")
    assert ref.hardware.precision == "bf16-mixed" and not ref.memory.optimizer_in_backward
    assert not ref.memory.offload_activations and ref.optim.optimizer == "adamw"
    big = apply_preset(base.replace(grad_accum=8), "Largest")
    assert big.memory.optimizer_in_backward and big.train.grad_accum == 1
    # Fastest leaves compile to the fast defaults' repay rule (a short run must not pay for a compile)
    assert get_preset("fastest")["compile"] is False and get_preset("fastest")["fast_defaults"] is True
    with pytest.raises(ConfigError, match="Fastest"):
        get_preset("quickest")


def test_memory_plan_counts_the_new_options():
    from ftstudio.engine.memory import estimate
    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32000, "tie_word_embeddings": True}
    base = RunConfig().replace(device="cuda", precision="bf16", batch_size=2, seq_len=512)
    n = estimate(cfg, base).params
    sr = estimate(cfg, base).optimizer
    assert 4 * n <= sr < 4.1 * n                         # bf16 moments, stochastic rounding: no buffer
    kahan = estimate(cfg, base.replace(bf16_rounding="kahan")).optimizer
    assert kahan >= 6 * n                                # bf16 moments + the bf16 compensation buffer
    eight = estimate(cfg, base.replace(optimizer="adamw8bit")).optimizer
    assert eight < 2.2 * n
    ck = base.replace(activation_checkpointing=True)
    assert estimate(cfg, ck.replace(offload_activations=True)).parts["layers"] < estimate(cfg, ck).parts["layers"]
    inbwd = estimate(cfg, base.replace(optimizer_in_backward=True))
    assert inbwd.gradients == 2 * 32000 * 256 < estimate(cfg, base).gradients   # the largest tensor's, not all


def test_cli_preset_flag_applies_before_the_flags():
    import argparse
    from ftstudio.cli.train import add_parser, load_config
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    cfg = load_config(ap.parse_args(["train", "--preset", "largest", "--lr", "1e-5"]))
    assert cfg.memory.optimizer_in_backward and cfg.optim.optimizer == "adamw8bit" and cfg.optim.lr == 1e-5
    with pytest.raises(ConfigError, match="not a preset"):
        load_config(ap.parse_args(["train", "--preset", "nope"]))


def test_compiled_kahan_update_keeps_its_compensation():
    """Inductor must not fold the bf16 round trip away: the compiled update has to equal the eager one."""
    import torch

    from ftstudio.engine.train import optim as O

    torch.manual_seed(0)
    w0 = torch.randn(64, 64).bfloat16()
    grads = [(torch.randn(64, 64) * 1e-2 + 3e-3).bfloat16() for _ in range(30)]

    def run(update):
        p, m, v, c = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0), torch.zeros_like(w0)
        for i, g in enumerate(grads, 1):
            update(p, g, m, v, c, torch.tensor(float(i)), torch.tensor(5e-5), 0.9, 0.999, 1e-8, 0.01, False)
        return p, c

    p_eager, c_eager = run(O._adamw_update)
    try:
        p_comp, c_comp = run(O._compiled_update())
    except Exception as e:  # no C++ compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable on CPU here: {type(e).__name__}")
    assert c_eager.abs().sum() > 0
    assert torch.equal(p_eager, p_comp) and torch.allclose(c_eager.float(), c_comp.float(), atol=1e-7)


def test_compiled_head_loss_equals_the_models_own_loss_and_gradients(tiny_llama):
    """loss=full with compile: the head + cross-entropy graph must give the model's own loss and gradients."""
    m = _model(tiny_llama)
    b = _batch(m.config.vocab_size, rows=3, length=12)
    b["labels"][0, :5] = -100                                  # prompt tokens masked, as the data layer does
    ref = m(**b).loss
    ref.backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    assert lm_loss.plain_head(m)
    hidden = m.model(input_ids=b["input_ids"]).last_hidden_state
    try:
        got = lm_loss.compiled_cross_entropy(hidden, m.get_output_embeddings(), b["labels"])
    except Exception as e:  # no C++ compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable on CPU here: {type(e).__name__}")
    got.backward()
    assert torch.allclose(got, ref, atol=1e-5)
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, want[n], atol=1e-5, rtol=1e-4), n


def test_plain_head_refuses_models_that_scale_their_logits(tiny_llama):
    m = _model(tiny_llama)
    m.config.final_logit_softcapping = 30.0                     # Gemma 2 style: the loss must use the model's forward
    assert not lm_loss.plain_head(m)


def test_adamw4bit_is_a_choice_with_its_own_memory_and_a_clear_cpu_error(tiny_llama):
    import math

    from ftstudio.engine.memory import optimizer_bytes
    from ftstudio.engine.models import shape_from_config
    m = _model(tiny_llama)
    with pytest.raises(ConfigError, match="adamw4bit needs a CUDA GPU"):
        build_optimizer(m, OptimConfig(optimizer="adamw4bit"), device_type="cpu")
    assert RunConfig().replace(optimizer="adamw4bit").optim.optimizer == "adamw4bit"
    shape = shape_from_config(m.config.to_dict())
    four, eight = optimizer_bytes(shape, "adamw4bit", 2), optimizer_bytes(shape, "adamw8bit", 2)
    big = [math.prod(s) for s in shape.tensors.values() if math.prod(s) >= 4096 and math.prod(s) % 128 == 0]
    small = [math.prod(s) for s in shape.tensors.values() if math.prod(s) not in big]
    assert four == sum(n + 8 * (n // 128) for n in big) + 4 * sum(small)
    assert four < eight


@pytest.mark.parametrize("compiled", [False, True])
def test_stochastic_rounding_moves_the_stored_weights_from_the_first_step_kahan_lags(compiled):
    """Why "Fastest" rounds stochastically: an update below half a bf16 step leaves Kahan's stored weights
    where they were (the model computes with the old weights until the buffer fills), while stochastic
    rounding moves them by the update on average, from the first step (seen on SmolLM2: Kahan trailed the
    reference for ~30 steps)."""
    from ftstudio.engine.train import optim as O
    fn = O._adamw_update
    if compiled:
        try:
            fn = torch.compile(O._adamw_update, dynamic=False, options={"emulate_precision_casts": True})
            fn(*_one_update_args(True), 0.9, 0.999, 1e-8, 0.0, True)
        except Exception as e:  # no C++ compiler for inductor on this machine
            pytest.skip(f"torch.compile unavailable on CPU here: {type(e).__name__}")
    lr = 2e-4                                      # 1/10 of bf16's spacing at 1.0 (2^-7 = 0.0078)
    for stochastic in (False, True):
        p, g, m, v, comp, step, _ = _one_update_args(not stochastic)
        before = p.clone()
        fn(p, g, m, v, comp, step, torch.tensor(lr), 0.9, 0.999, 1e-8, 0.0, stochastic)
        moved = (before.float() - p.float()).mean().item()       # gradients are +1: weights go down by lr
        if stochastic:
            assert abs(moved - lr) < lr * 0.1
        else:
            assert moved == 0.0 and torch.allclose(comp.float(), torch.full_like(comp.float(), -lr), rtol=0.02)


def _one_update_args(kahan: bool):
    torch.manual_seed(0)
    p = torch.ones(1 << 16, dtype=torch.bfloat16)
    zeros = lambda: torch.zeros_like(p)  # noqa: E731
    return p, torch.ones_like(p), zeros(), zeros(), zeros() if kahan else None, torch.ones(()), torch.tensor(2e-4)
