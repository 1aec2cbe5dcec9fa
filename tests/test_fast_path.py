"""Issue 18: loading straight onto the training device in the training dtype, and the fast-path defaults."""
from __future__ import annotations

import pytest
import torch

from ftstudio.core.config import ModelConfig
from ftstudio.engine.models import load_model
from ftstudio.engine.models.load import load_target


def test_load_onto_a_device_in_the_training_dtype(tiny_llama):
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm", device="cpu", dtype=torch.bfloat16)
    params = list(lm.model.parameters())
    assert {p.dtype for p in params} == {torch.bfloat16}
    assert {p.device.type for p in params} == {"cpu"}
    assert all(p.requires_grad for p in params)
    lm.model.to(device="cpu", dtype=torch.bfloat16)  # the trainer's _place_model is then a no-op, not an error


def test_from_pretrained_gets_the_device_map(tiny_llama, monkeypatch):
    """A device load that the shard loader cannot take goes through from_pretrained(device_map=...); the CPU
    path passes none. (CI has no GPU: "cpu" stands in for the device, the shard loader told not to apply.)"""
    from transformers import AutoModelForCausalLM
    from ftstudio.engine.models import shards

    seen = {}
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kw):
        seen.update(kw)
        return real(cls, *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    monkeypatch.setattr(shards, "not_applicable", lambda *a: "told not to (test)")
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm", device="cpu", dtype=torch.bfloat16)
    assert seen["device_map"] == {"": "cpu"} and seen["dtype"] == torch.bfloat16
    assert "from_pretrained (told not to (test))" in lm.load_note
    seen.clear()
    load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm")  # the CPU path: as before, no device_map
    assert "device_map" not in seen and seen["dtype"] == torch.float32


def test_meta_device_builds_a_skeleton_without_reading_weights(tiny_llama, monkeypatch):
    """device="meta" (planning, FSDP's non-zero ranks): modules with shapes and dtypes, no storage, no weights
    read; transformers 5.25 refuses device_map={"": "meta"}, so this path must not use it."""
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("from_pretrained must not run for a meta skeleton")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(refuse))
    lm = load_model(ModelConfig(source=str(tiny_llama)), task="causal-lm", device="meta", dtype=torch.bfloat16)
    params = dict(lm.model.named_parameters())
    assert {p.device.type for p in params.values()} == {"meta"}
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert all(p.requires_grad for p in params.values()) and "skeleton" in lm.load_note
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(str(tiny_llama))
    assert params["model.embed_tokens.weight"].shape == (cfg.vocab_size, cfg.hidden_size)


def test_new_head_is_initialised_on_the_device_and_seeded(tiny_bert):
    def head(seed):
        torch.manual_seed(seed)
        lm = load_model(ModelConfig(source=str(tiny_bert)), task="classification", num_labels=3, device="cpu",
                        dtype=torch.bfloat16)
        assert lm.new_params, "the classifier head is new"
        w = dict(lm.model.named_parameters())[lm.new_params[-1]]
        assert w.dtype == torch.bfloat16 and w.device.type == "cpu"
        return w.detach().clone()

    a, b, c = head(0), head(0), head(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.float().abs().sum() > 0


def test_load_target_only_for_one_cuda_device():
    assert load_target("cpu", torch.float32) == {}
    assert load_target("cuda:0", torch.bfloat16) == {"device": "cuda:0", "dtype": torch.bfloat16}
    assert load_target("cuda:0", torch.float32, gpus=2) == {}  # FSDP ranks shard a host copy (its own path)


# ---------------------------------------------------------------- host RAM in the plan
def _llama8b():
    from ftstudio.engine.models import shape_from_config
    return shape_from_config({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192})


def test_host_ram_of_a_gpu_run_is_a_shard_not_the_model():
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.memory import estimate
    from ftstudio.engine.memory.plan import HOST_BASE, HOST_SHARD, host_bytes

    shape = _llama8b()
    run = RunConfig().replace(device="cuda", precision="bf16-mixed", seq_len=2048)
    plan = estimate(shape, run)
    assert plan.host == HOST_BASE + HOST_SHARD < 2 * shape.params      # far below the 32 GB fp32 model
    assert host_bytes(shape, run, shard_bytes=int(1e9)) == HOST_BASE + HOST_SHARD   # export's shard bounds it
    # What stays on the host for the whole run is counted: offloaded block inputs, a CPU θ0 anchor, best copy.
    off = estimate(shape, run.replace(activation_checkpointing=True, offload_activations=True)).host
    assert off - plan.host == run.train.batch_size * 2048 * 32 * 4 * 4096   # fp32 residual stream
    assert estimate(shape, run.replace(l2sp=0.1, l2sp_anchor="cpu")).host - plan.host == 4 * shape.params
    assert estimate(shape, run, gpus=2).host == 2 * (HOST_BASE + 4 * shape.params)   # FSDP ranks: as before
    cpu = estimate(shape, run.replace(device="cpu"), device="cpu")
    assert cpu.host > cpu.total                                        # a CPU run holds the whole plan


def test_estimate_prints_host_ram_and_the_largest_shard(tmp_path):
    import json

    from ftstudio.engine.memory import estimate_report, format_report

    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
           "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
           "max_position_embeddings": 512}
    from ftstudio.engine.memory.plan import HOST_BASE
    from ftstudio.engine.memory.report import _largest_shard

    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"0" * 3000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"0" * 7000)
    assert _largest_shard(str(tmp_path)) == _largest_shard(str(tmp_path / "config.json")) == 7000
    assert _largest_shard(None) is None
    report = estimate_report(model_config=cfg, seq_len=128)
    assert report["host_bytes"] == HOST_BASE + 4 * report["params"]   # the fp32 export of a tiny model
    text = format_report(report)
    assert "host RAM" in text and "one shard at a time" in text
    report["host_ram_bytes"] = report["host_bytes"] - 1
    assert "NOT enough" in format_report(report)


# ---------------------------------------------------------------- multi-tensor bf16 AdamW
@pytest.mark.parametrize("rounding", ["stochastic", "kahan", "nearest"])
def test_multi_tensor_bf16_adamw_equals_the_per_tensor_loop(rounding, monkeypatch):
    from ftstudio.engine.train import optim
    from ftstudio.engine.train.optim import CompensatedAdamW

    monkeypatch.setattr(optim, "FOREACH_CHUNK", 300)   # several multi-tensor calls per bucket
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (32, 5), (3, 4, 5), (100,)]
    base = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) * 10 ** -k for s in shapes] for k in range(4)]

    def run(foreach):
        params = [torch.nn.Parameter(t.clone().to(torch.bfloat16 if i != 1 else torch.float32))
                  for i, t in enumerate(base)]                        # one fp32 tensor: its own bucket
        opt = CompensatedAdamW([{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:]}], lr=1e-2,
                               rounding=rounding, foreach=foreach)
        torch.manual_seed(1234)                                       # the stochastic rounding's noise
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.to(p.dtype)
            opt.step()
        return params, opt

    loop, opt_loop = run(False)
    multi, opt_multi = run(True)
    for a, b in zip(loop, multi):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0)   # the same arithmetic, bit for bit
    for a, b in zip(loop, multi):
        for key, value in opt_loop.state[a].items():
            torch.testing.assert_close(value.float(), opt_multi.state[b][key].float(), rtol=0, atol=0)
    assert any(not torch.equal(p.float(), t) for p, t in zip(multi, base))   # it did move the weights


# ---------------------------------------------------------------- the fast-path defaults
def _choose(cfg=None, device="cuda:0", **kw):
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train.fast_path import choose

    args = dict(task="causal-lm", rows_fill=0.2, total_steps=5000, params=1_240_000_000, frozen=False,
                inductor=True)
    args.update(kw)
    return choose(cfg or RunConfig().replace(batch_size=4, seq_len=2048), device, **args)


def test_fast_defaults_on_one_gpu_for_a_long_run_of_short_rows():
    chosen, lines = _choose()
    assert chosen == {"compile": True, "packing": True}
    assert any("packing on" in line for line in lines) and any("compile on" in line for line in lines)


def test_fp8_that_only_a_compiled_run_gets_counts_in_the_repay_rule():
    """Llama-3-8B, 1 × 4096, 200 steps (an H100: eager 8.9 k tokens/s; compiled bf16 10.9 k, compiled with FP8
    13.1 k, first step 25 s): compiling alone saves ~25 s of ~100, short of its ~30 s; with the FP8 it brings,
    ~33 s: the compiled FP8 run is the faster one (87 s against 92 s measured)."""
    from ftstudio.core.config import RunConfig

    cfg = RunConfig().replace(batch_size=1, seq_len=4096)
    eight_b = dict(rows_fill=1.0, total_steps=200, params=8_030_000_000)
    chosen, lines = _choose(cfg, **eight_b)
    assert not chosen["compile"] and not any("FP8" in ln for ln in lines)
    chosen, lines = _choose(cfg, fp8="tensorwise", **eight_b)
    assert chosen["compile"] and any("compile on" in ln and "with FP8 (tensorwise)" in ln for ln in lines)
    chosen, lines = _choose(cfg, fp8="tensorwise", **{**eight_b, "total_steps": 100})
    assert not chosen["compile"] and any("would not repay" in ln and "FP8" in ln for ln in lines)


def test_fp8_if_compiled_is_off_where_fp8_does_not_hang_on_compile():
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train.fast_path import fp8_if_compiled

    auto = RunConfig().replace(fp8="auto")
    assert fp8_if_compiled(auto, "cpu", 8_000_000_000) == "off"                     # no GPU
    assert fp8_if_compiled(auto.replace(compile=True), "cuda:0", 8_000_000_000) == "off"   # already compiled
    assert fp8_if_compiled(auto.replace(fp8="tensorwise"), "cuda:0", 8_000_000_000) == "off"   # set by the user
    assert fp8_if_compiled(auto, "cuda:0", 8_000_000_000) == "off"                  # this machine has no FP8 GPU


def test_fast_defaults_say_why_each_stays_off():
    from ftstudio.engine.train.fast_path import COMPILE_GAIN, COMPILE_SECONDS, compile_pays

    chosen, lines = _choose(total_steps=25)                 # 25 steps of a 1B model cannot repay compiling
    assert chosen == {"compile": False, "packing": False}   # nor the per-document attention packing compiles
    assert any("compile off" in ln and "would not repay" in ln for ln in lines)
    assert any("packing off" in ln and "would not repay" in ln and "--packing" in ln for ln in lines)
    pays, eager_s = compile_pays(25, 1_240_000_000, 4 * 2048)
    assert not pays and eager_s * COMPILE_GAIN < COMPILE_SECONDS
    chosen, lines = _choose(frozen=True)
    assert not chosen["compile"] and any("bundled app" in ln for ln in lines)
    chosen, lines = _choose(inductor=False)
    assert not chosen["compile"] and any("triton" in ln for ln in lines)
    chosen, lines = _choose(task="classification")
    assert not chosen["packing"] and any("classifier" in ln for ln in lines)
    chosen, lines = _choose(rows_fill=0.95)
    assert not chosen["packing"] and any("fill 95%" in ln for ln in lines)


def test_cpu_several_gpus_and_opt_out_run_the_fields_as_written():
    from ftstudio.core.config import RunConfig

    base = RunConfig().replace(batch_size=4, seq_len=2048)
    for cfg, device in ((base, "cpu"), (base.replace(fast_defaults=False), "cuda:0")):
        assert _choose(cfg, device) == ({"compile": False, "packing": False}, [])
    # several GPUs: only the compile decision (Fastest leaves compile to it), packing as written
    chosen, lines = _choose(base.replace(gpus=[0, 1]), "cuda:0")
    assert chosen == {"compile": True, "packing": False} and all("packing" not in ln for ln in lines)
    assert _choose(base.replace(gpus=[0, 1]), "cuda:0", total_steps=25)[0] == {"compile": False, "packing": False}
    forced = base.replace(compile=True, packing=True)
    assert _choose(forced, total_steps=1) == ({"compile": True, "packing": True}, [])   # a field set true stays on


def test_the_reference_preset_turns_the_fast_defaults_off():
    from ftstudio.core.config import RunConfig
    from ftstudio.core.presets import apply_preset

    assert RunConfig().memory.fast_defaults is True
    assert apply_preset(RunConfig(), "Reference").memory.fast_defaults is False


def test_apply_packs_the_prepared_rows_on_a_gpu_and_leaves_cpu_runs_alone():
    from types import SimpleNamespace

    from ftstudio.core.config import RunConfig
    from ftstudio.engine.data.collate import Collator
    from ftstudio.engine.train.fast_path import apply

    def prepared():
        rows = [{"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]} for _ in range(40)]
        return SimpleNamespace(train=rows, val=rows[:4], task="causal-lm", collate=Collator(0, "causal-lm"))

    cfg, said = RunConfig().replace(seq_len=64, batch_size=2), []
    schedule = lambda n, _general: SimpleNamespace(total_steps=n)  # noqa: E731
    same_cfg, same = apply(cfg, "cpu", p0 := prepared(), SimpleNamespace(params=10_000), schedule, said.append)
    assert same is p0 and same_cfg is cfg and len(same.train) == 40 and not said
    from ftstudio.engine.train.fast_path import inductor_available

    big = SimpleNamespace(params=10**15)           # a run long enough to repay the packed attention's compiling
    new_cfg, packed = apply(cfg, "cuda:0", prepared(), big, schedule, said.append)
    assert packed.collate.packed and len(packed.train) < 40 and new_cfg.data.packing
    assert new_cfg.memory.compile == inductor_available()
    assert sum(len(r["input_ids"]) for r in packed.train) == 40 * 4      # every token kept
    assert [e.message for e in said][0].startswith("Fast defaults: packing on")
