"""The Largest preset's plan: the run frees its model (the step in backward's hooks), which library runs the 8/4-bit
states (one decision for the trainer and the planner, with torchao / bitsandbytes mocked missing or broken), the
tracer's reentrant recompute under CUDA's rules and the in-backward update's transient, and the plan naming what
lies outside what was checked on a GPU."""
from __future__ import annotations

import gc
import importlib.machinery
import sys
import types
import weakref

import pytest
import torch
from torch import nn

from ftstudio.core.config import OptimConfig, RunConfig
from ftstudio.core.errors import ConfigError
from ftstudio.engine.memory import lowbit
from ftstudio.engine.memory.checked import unchecked
from ftstudio.engine.memory.plan import lowbit_for, optimizer_bytes
from ftstudio.engine.train.optim import build_optimizer


# -- the step in backward frees the model -------------------------------------------------------------------------
def test_in_backward_run_frees_its_parameters():
    """A parameter's hook lives in torch's C++ side, out of the garbage collector's sight: a hook that held the
    optimizer kept every finished run's weights and states alive (the H100 benchmark's Largest rows)."""
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 2))
    opt = build_optimizer(model, OptimConfig(lr=1e-2), device_type="cpu", in_backward=True)
    before = model[0].weight.detach().clone()
    model(torch.randn(4, 32)).sum().backward()
    assert not torch.equal(before, model[0].weight)       # the hooks still step while the optimizer lives
    assert model[0].weight.grad is None
    alive = weakref.ref(model[0].weight)
    del model, opt
    gc.collect()
    assert alive() is None


# -- which library runs the 8/4-bit states: one decision --------------------------------------------------------
def _package(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


class _Broken(types.ModuleType):
    def __getattr__(self, name):
        raise RuntimeError("torchao C++ extension built for another torch")


def _fake_optimizer(library):
    class Fake(torch.optim.SGD):
        made_by = library

        def __init__(self, groups, lr, betas, eps, weight_decay, **kw):
            self.kw = kw
            super().__init__(groups, lr=lr)
    return Fake


@pytest.fixture
def libraries(monkeypatch):
    """set(torchao=..., bitsandbytes=..., ours=...) with "ok", "broken" or None (not installed); ``ours`` (FT
    Studio's own FP8-state AdamW, first for adamw8bit) is made unimportable unless "ok"."""
    def set_(torchao=None, bitsandbytes=None, ours=None):
        if ours != "ok":
            monkeypatch.setitem(sys.modules, "ftstudio.engine.train.fp8_state_adamw", None)
        for pkg, state in (("torchao", torchao), ("bitsandbytes", bitsandbytes)):
            if state is None:
                monkeypatch.setitem(sys.modules, pkg, None)              # import raises, find_spec says absent
                continue
            monkeypatch.setitem(sys.modules, pkg, _package(pkg))
            sub = _Broken(f"{pkg}.optim") if state == "broken" else _package(
                f"{pkg}.optim", AdamW8bit=_fake_optimizer(pkg), AdamW4bit=_fake_optimizer(pkg))
            sub.__spec__ = importlib.machinery.ModuleSpec(f"{pkg}.optim", None)
            monkeypatch.setitem(sys.modules, f"{pkg}.optim", sub)
        lowbit.forget()
    yield set_
    lowbit.forget()


def _run(kind: str) -> RunConfig:
    return RunConfig().replace(optimizer=kind, precision="bf16", device="cuda")


@pytest.mark.parametrize("torchao, bnb, expected", [("ok", "ok", "torchao"), ("broken", "ok", "bitsandbytes"),
                                                     (None, "ok", "bitsandbytes"), ("ok", None, "torchao")])
def test_trainer_builds_what_the_plan_plans(libraries, torchao, bnb, expected):
    libraries(torchao=torchao, bitsandbytes=bnb)
    model = nn.Linear(64, 64).to(torch.bfloat16)
    opt = build_optimizer(model, OptimConfig(optimizer="adamw8bit"), device_type="cuda")
    assert type(opt).made_by == expected == lowbit_for(_run("adamw8bit"), probe=True)
    assert ("bf16_stochastic_round" in opt.kw) == (expected == "torchao")   # bitsandbytes' takes no such flag
    if torchao == "broken":
        assert "RuntimeError: torchao C++ extension" in lowbit.lowbit_library("adamw8bit").tried[1]


@pytest.mark.parametrize("torchao, bnb", [(None, None), ("broken", None), ("broken", "broken")])
def test_no_usable_library_stops_the_run_and_the_plan_says_so(libraries, torchao, bnb):
    libraries(torchao=torchao, bitsandbytes=bnb)
    with pytest.raises(ConfigError, match="adamw8bit needs ftstudio or torchao or bitsandbytes"):
        build_optimizer(nn.Linear(8, 8), OptimConfig(optimizer="adamw8bit"), device_type="cuda")
    assert lowbit_for(_run("adamw8bit"), probe=True) is None
    from ftstudio.engine.memory.traced import _lowbit
    from ftstudio.engine.memory.plan import MemoryBreakdown
    out = _lowbit(MemoryBreakdown(0, 0, 0, 0, 0), _run("adamw8bit"), "cuda:0")
    assert any("the run will stop at setup" in n for n in out.notes)


@pytest.mark.parametrize("torchao", ["ok", None])
def test_our_fp8_state_adamw_comes_first_and_is_planned_as_built(libraries, torchao):
    libraries(torchao=torchao, bitsandbytes="ok", ours="ok")
    model = nn.Linear(300, 64).to(torch.bfloat16)
    opt = build_optimizer(model, OptimConfig(optimizer="adamw8bit"), device_type="cuda")
    assert type(opt).__name__ == "Fp8StateAdamW" and lowbit_for(_run("adamw8bit"), probe=True) == "ftstudio"
    model.weight.grad = torch.randn_like(model.weight)
    model.bias.grad = torch.randn_like(model.bias)
    opt.step()
    built = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values())
    shape = types.SimpleNamespace(tensors={n: tuple(p.shape) for n, p in model.named_parameters()})
    assert optimizer_bytes(shape, "adamw8bit", 2, library="ftstudio") == built    # the state, byte for byte


def test_adamw4bit_is_torchao_only(libraries):
    libraries(torchao=None, bitsandbytes="ok")
    with pytest.raises(ConfigError, match="adamw4bit needs torchao"):
        build_optimizer(nn.Linear(8, 8), OptimConfig(optimizer="adamw4bit"), device_type="cuda")


def test_state_layout_follows_the_library():
    """torchao keeps plain states in the weight's dtype for a tensor it does not quantise; bitsandbytes fp32."""
    shape = types.SimpleNamespace(tensors={"big": (4096, 4096), "norm": (2048,), "odd": (4104, 3)})
    n_big, n_odd = 4096 * 4096, 4104 * 3                 # odd: 4096+ values, not a multiple of 256
    big = 2 * n_big + 8 * (n_big // 256)
    assert optimizer_bytes(shape, "adamw8bit", 2, library="torchao") == big + 2 * 2 * (2048 + n_odd)
    assert optimizer_bytes(shape, "adamw8bit", 2, library="bitsandbytes") == \
        big + 8 * 2048 + 2 * n_odd + 8 * -(-n_odd // 256)   # bitsandbytes quantises any tensor of 4096+ values


# -- the tracer: reentrant recompute and the in-backward update ----------------------------------------------------
def _tiny_bert():
    from transformers import BertConfig
    return BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                      vocab_size=512, max_position_embeddings=256)


def test_reentrant_recompute_runs_under_cudas_rules():
    """A reentrant checkpoint recomputes inside autograd's backward, where the step's torch-function modes are not
    active: its SDPA ran with dropout on the CPU's math kernel, keeping (B, H, S, S) scores CUDA never makes."""
    from ftstudio.engine.memory.tracer import StepChoices
    from ftstudio.engine.memory.tracer.step import _trace_once

    peaks = {}
    for reentrant in (False, True):
        choices = StepChoices(batch=4, seq_len=256, precision="bf16", task="classification", checkpointing=True,
                              reentrant=reentrant, padded=True)
        peaks[reentrant] = _trace_once(_tiny_bert(), choices, False)["train_peak"]
    scores = 4 * 4 * 256 * 256 * 2                      # one bf16 score matrix of the batch
    assert abs(peaks[True] - peaks[False]) < scores


def test_in_backward_update_is_traced_when_its_gradient_completes():
    from transformers import LlamaConfig

    from ftstudio.engine.memory.tracer import StepChoices
    from ftstudio.engine.memory.tracer.step import _trace_once

    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)
    peak = {}
    for per in (0, 64):
        choices = StepChoices(batch=2, seq_len=64, precision="bf16", in_backward=True, step_bytes=per)
        peak[per] = _trace_once(config, choices, False)["train_peak"]
    transient = 64 * 4096 * 64              # 64 B a value of the tied embedding, the largest tensor
    # counted once, when the embedding's gradient completes (the very end of backward, the loss's logits long
    # gone): the peak grows by less than the transient, which the plan used to add on top of the step's peak
    assert 0.5 * transient < peak[64] - peak[0] < transient


# -- what was checked on a GPU -------------------------------------------------------------------------------------
BASE = RunConfig().replace(device="cuda")
FAMILIES = {
    "defaults": ({}, "bf16-mixed", False),
    "long": ({}, "bf16-mixed", True),
    "checkpointed": ({"activation_checkpointing": True, "loss": "chunked"}, "bf16-mixed", False),
    "fastest": ({"precision": "bf16", "bf16_rounding": "stochastic"}, "bf16", True),
    "largest": ({"precision": "bf16", "optimizer": "adamw8bit", "optimizer_in_backward": True, "loss": "chunked",
                 "activation_checkpointing": True, "offload_activations": True}, "bf16", True),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_measured_settings_are_checked(name):
    leaves, precision, compiled = FAMILIES[name]
    assert unchecked(BASE.replace(**leaves), model_type="llama", precision=precision, compiled=compiled) == []


@pytest.mark.parametrize("leaves, precision, compiled, said", [
    ({"precision": "bf16", "activation_checkpointing": True, "loss": "chunked"}, "bf16", False,
     "pure bf16, adamw, chunked loss, checkpointing, eager"),           # the budget chooser's pure-bf16 pick
    ({"precision": "bf16", "fp8": "tensorwise"}, "bf16", True, "FP8"),
    ({"method": "simpo"}, "bf16-mixed", False, "simpo"),
    ({"method": "dpo", "activation_checkpointing": True, "loss": "chunked"}, "bf16-mixed", False,
     "dpo with the checkpointed + chunked options"),
    ({"precision": "fp16-mixed"}, "fp16-mixed", False, "fp16-mixed"),
    ({"optimizer": "adamw4bit", "precision": "bf16", "optimizer_in_backward": True, "loss": "chunked",
      "activation_checkpointing": True, "offload_activations": True}, "bf16", True, "adamw4bit"),
    ({"grad_accum": 4}, "bf16-mixed", False, "gradient accumulation"),
    ({"l2sp": 0.1}, "bf16-mixed", False, "θ0 copies"),
    ({"precision": "bf16", "bf16_rounding": "kahan"}, "bf16", True, "Kahan"),
])
def test_outside_what_was_checked_is_named(leaves, precision, compiled, said):
    what = unchecked(BASE.replace(**leaves), model_type="llama", precision=precision, compiled=compiled)
    assert any(said in w for w in what), what


def test_plan_widens_the_margin_outside_what_was_checked():
    from ftstudio.engine.memory.traced import MARGIN_CHECKED, MARGIN_UNCHECKED, plan

    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}
    run = BASE.replace(batch_size=1, seq_len=32)
    assert plan(cfg, run, device="cuda:0", trace=False).margin <= max(MARGIN_CHECKED, 0.02)
    chosen = plan(cfg, run.replace(precision="bf16", activation_checkpointing=True), device="cuda:0", trace=False)
    assert chosen.margin == MARGIN_UNCHECKED
    assert any("outside what was checked on a GPU" in n and "pure bf16" in n for n in chosen.notes)


# -- plan_run plans the run setup makes: the budget's choice and FP8 auto ------------------------------------------
LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}


def test_plan_run_plans_the_memory_budgets_choice_and_says_it_is_unchecked():
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    run = BASE.replace(batch_size=4, seq_len=2048, max_steps=3, gpu_memory=24.0)
    rows = RowFacts(count=64, longest=2048, fill=1.0, padded=False, total_steps=3)
    rp = plan_run(run, model_config=dict(LLAMA_1B), device="cuda", rows=rows, trace=False)
    assert any(line.startswith("Memory budget 24.0 GB") for line in rp.lines)
    assert rp.config.hardware.precision == "bf16"         # "auto" became pure bf16 for the budget, as in setup
    assert rp.plan.peak_allocated <= 24e9
    assert rp.plan.margin >= 0.06 and any("outside what was checked on a GPU" in n for n in rp.plan.notes)


def test_plan_run_resolves_fp8_auto_as_setup_does(monkeypatch):
    from ftstudio.engine.train import fast_path, fp8
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    monkeypatch.setattr(fast_path, "inductor_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torchao", _package("torchao"))      # installed, as train/fp8.py asks
    big = {**LLAMA_1B, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "tie_word_embeddings": False}
    run = BASE.replace(batch_size=1, seq_len=2048, precision="bf16", fp8="auto", compile=True)
    rows = RowFacts(count=8, longest=2048, fill=1.0, padded=False, total_steps=900)
    rp = plan_run(run, model_config=big, device="cuda", rows=rows, trace=False)
    assert rp.config.memory.fp8 == "tensorwise" and any(line.startswith("FP8 on (auto)") for line in rp.lines)
    assert any("FP8 linear layers" in n for n in rp.plan.notes) and rp.plan.margin >= 0.06
    small = plan_run(run, model_config={**LLAMA_1B, "num_hidden_layers": 4}, device="cuda", rows=rows, trace=False)
    assert small.plan.params < fp8.AUTO_MIN_PARAMS                       # under the size where FP8 measured faster
    assert small.config.memory.fp8 == "off" and not any("FP8" in n for n in small.plan.notes)
