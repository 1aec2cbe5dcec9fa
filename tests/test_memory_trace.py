"""The memory tracer (engine/memory/tracer/): the training step of tiny models of several architectures traced on
fake tensors, checked against the same step on real CPU tensors and against the tensors autograd really saves;
the extrapolation from two and three blocks against the whole model; a 70B-shape plan in seconds; the plan of
the run `train` would start (fast defaults, data rows) and the planned peak a CUDA run's snapshots carry."""
from __future__ import annotations

import json
import time

import pytest
import torch

from ftstudio.engine.memory.tracer import LiveBytes, StepChoices, hf_config, trace_step
from ftstudio.engine.memory.tracer.step import _trace_once
from ftstudio.engine.train.loss import causal_lm_loss

TINY = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=256),
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=1, vocab_size=300, max_position_embeddings=256,
                  tie_word_embeddings=True),
    "gemma2": dict(model_type="gemma2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, head_dim=32,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=256,
                   sliding_window=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "phi3": dict(model_type="phi3", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=300, max_position_embeddings=256,
                 original_max_position_embeddings=256, pad_token_id=0),
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=256),
    "qwen3_moe": dict(model_type="qwen3_moe", hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      num_experts=4, num_experts_per_tok=2, vocab_size=300, max_position_embeddings=256),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, vocab_size=300, n_positions=256),
    "bert": dict(model_type="bert", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=128, vocab_size=300, max_position_embeddings=256),
}


def choices(name: str, **kw) -> StepChoices:
    base = dict(batch=2, seq_len=32, precision="fp32", block=1, loss_fn=causal_lm_loss,
                task="classification" if name == "bert" else "causal-lm")
    base.update(kw)
    return StepChoices(**base)


@pytest.mark.parametrize("name", list(TINY))
def test_fake_trace_equals_the_real_step_on_the_cpu(name):
    """The bytes alive at the peak of forward + loss + backward, counted on fake tensors, equal those of the same
    step on real tensors (weights, gradients, activations, the loss's logits), for every architecture here."""
    config = hf_config(TINY[name])
    torch.manual_seed(0)
    fake = _trace_once(config, choices(name), False)
    real = _trace_once(config, choices(name), False, fake=False)
    for key in ("weights", "gradients", "train_peak", "eval_peak", "params"):
        assert fake[key] == pytest.approx(real[key], rel=0.01), key
    assert fake["train_peak"] > fake["weights"] + fake["gradients"] // 2    # activations are counted


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2"])
def test_checkpointed_and_chunked_steps_trace_like_the_real_ones(name):
    config = hf_config(TINY[name])
    ch = choices(name, checkpointing=True, loss="chunked")
    fake = _trace_once(config, ch, False)
    real = _trace_once(config, ch, False, fake=False)
    assert fake["train_peak"] == pytest.approx(real["train_peak"], rel=0.01)
    plain = _trace_once(config, choices(name), False)
    assert fake["train_peak"] < plain["train_peak"]                         # checkpointing saves memory


def test_live_bytes_after_forward_are_the_tensors_autograd_saved():
    """Torch's own account: after the forward, the bytes alive beyond the weights are the storages autograd saved
    for backward (collected through saved_tensors_hooks) plus the outputs still held (logits, loss)."""
    from transformers import AutoModelForCausalLM

    config = hf_config(TINY["llama"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, 300, (2, 32))
    saved = {}

    def pack(t):
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t
    live = LiveBytes(1)
    with live:
        live.count(list(model.parameters()))
        weights = live.live
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=ids)
        after = live.live - weights
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (out.logits, out.loss)}
    expected = sum(n for k, n in {**saved, **held}.items() if k not in params)
    assert after == pytest.approx(expected, rel=0.02)
    assert after > 0


def test_extrapolated_depth_equals_the_whole_model():
    """A deep model is traced with two and three blocks and extrapolated; the answer is the whole model's."""
    cfg = dict(TINY["llama"], num_hidden_layers=9)
    for ck in (False, True):
        ch = choices("llama", checkpointing=ck, loss="chunked" if ck else "full")
        whole = _trace_once(hf_config(cfg), ch, False)
        t = trace_step(hf_config(cfg), ch)
        assert t.layers_traced == (2, 3)
        assert t.train_peak == pytest.approx(whole["train_peak"], rel=0.01)
        assert t.params == whole["params"] and t.weights == whole["weights"]


def test_gemma2_traces_whole_passes_of_its_layer_pattern():
    t = trace_step(hf_config(dict(TINY["gemma2"], num_hidden_layers=10)), choices("gemma2"))
    assert t.layers_traced == (4, 6)      # sliding / global alternate: a pass is two blocks


def test_cuda_rules_upcast_what_cuda_autocast_runs_in_fp32():
    """Planned for CUDA under bf16 autocast, GPT-2's tanh-GELU (pow) and LayerNorm run in fp32 as on CUDA: the
    traced step holds more than the CPU's own autocast would, and the allocator's 512-byte rounding is applied."""
    config = hf_config(dict(TINY["gpt2"], attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0))
    cpu = _trace_once(config, choices("gpt2", precision="bf16-mixed", block=1), False)
    cuda = _trace_once(config, choices("gpt2", precision="bf16-mixed", block=512), False)
    assert cuda["train_peak"] > cpu["train_peak"]
    assert cuda["weights"] % 512 == 0
    # attention dropout runs inside CUDA's fused kernels: no (B, H, S, S) scores kept, unlike the CPU's math kernel
    drop = _trace_once(hf_config(TINY["gpt2"]), choices("gpt2", precision="bf16-mixed", block=512), False)
    drop_cpu = _trace_once(hf_config(TINY["gpt2"]), choices("gpt2", precision="bf16-mixed", block=1), False)
    scores = 4 * 2 * 4 * 32 * 32                                   # layers × batch × heads × S × S
    assert drop_cpu["train_peak"] - drop["train_peak"] > scores


def test_a_70b_shape_plans_in_under_ten_seconds():
    cfg = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
               num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    hf_config(TINY["llama"])      # transformers imported before the clock starts
    t0 = time.perf_counter()
    t = trace_step(hf_config(cfg), StepChoices(batch=1, seq_len=4096, loss_fn=causal_lm_loss))
    assert time.perf_counter() - t0 < 10
    assert 69e9 < t.params < 72e9
    assert t.train_peak > t.weights + t.gradients                  # fp32 weights and gradients, then activations


def test_the_plan_of_the_run_train_would_start(tmp_path):
    """plan_run: the fast defaults decided by the trainer's own function, said; the data's rows set the length;
    the traced plan beside the closed form, with its margin; a model the tracer cannot build falls back."""
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    run = RunConfig().replace(batch_size=2, seq_len=64, device="cuda")
    rows = RowFacts(count=100, longest=40, fill=0.3, padded=True, total_steps=10**13)
    rp = plan_run(run, model_config=TINY["llama"], device="cuda", rows=rows)
    assert rp.plan.method == "traced" and rp.plan.margin > 0
    said = " ".join(rp.lines)
    assert "Data: 100 training rows" in said and "Fast defaults: packing on" in said
    assert rp.config.data.packing and rp.seq_len == 64          # packed rows fill seq_len
    short = plan_run(run, model_config=TINY["llama"], device="cuda",
                     rows=RowFacts(count=4, longest=40, fill=0.9, padded=True, total_steps=2))
    assert short.seq_len == 40 and not short.config.memory.compile and short.padded
    assert "phase:evaluation" in rp.plan.parts                    # validation rows (val_fraction 0.1): evaluated
    no_val = plan_run(run.replace(val_fraction=0.0), model_config=TINY["llama"], device="cuda", rows=rows)
    assert "phase:evaluation" not in no_val.plan.parts            # a run that never evaluates plans no evaluation
    odd = plan_run(run, model_config={**TINY["llama"], "model_type": "no_such_model"}, device="cuda", rows=rows)
    assert odd.plan.method == "closed form" and any("could not be traced" in n for n in odd.plan.notes)


def test_a_cuda_snapshot_carries_the_plan_of_its_run():
    """Every CUDA run is a calibration row: its memory snapshots carry planned_peak and the phases' plan."""
    from types import SimpleNamespace

    from ftstudio.core.config import RunConfig
    from ftstudio.engine.train.memory_log import snapshot

    model = torch.nn.Linear(4, 4)
    said = []
    trainer = SimpleNamespace(cfg=RunConfig().replace(batch_size=2, seq_len=32), _model_config=TINY["qwen2"],
                              compiled=False, optimizer=None, step=1, report=said.append)
    snap = snapshot(trainer, model, "cuda:0")
    assert snap.planned_peak and snap.planned_peak > 0
    assert set(snap.planned_phases) >= {"forward/backward", "optimizer step", "evaluation"}
    assert json.loads(json.dumps(snap.to_dict()))["planned_peak"] == snap.planned_peak
    cpu = snapshot(trainer, model, "cpu")
    assert cpu.planned_peak is None


def test_estimate_takes_train_flags_a_config_file_and_the_data(tmp_path, capsys):
    """`ftstudio estimate` with train's flags and YAML plans that run: the rows of the data file, the fast
    defaults' choices said, the traced plan beside the closed form and the textbook figure's omissions."""
    from tiny import save_tiny_llama

    from ftstudio.cli import main
    from ftstudio.core.config import RunConfig

    model = save_tiny_llama(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": "the cat and the dog " * (3 + i % 5)}) + "\n" for i in range(40)))
    yaml = tmp_path / "run.yaml"
    RunConfig().replace(source=str(model), dataset=str(data), batch_size=4, seq_len=64).save(yaml)
    assert main(["estimate", "--config", str(yaml), "--max-steps", "5", "--attention", "eager", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "traced" and report["batch_size"] == 4 and report["seq_len"] == 64
    assert any(c.startswith("Data: 36 training rows") for c in report["choices"]), report["choices"]
    assert report["closed_form_bytes"] > 0 and "logits" in report["textbook_omits"]
    assert main(["estimate", str(model), "--no-trace", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["method"] == "closed form"


def test_compiled_blocks_save_what_inductors_partitioner_keeps():
    """compile: each block's forward and backward are AOTAutograd graphs split by inductor's min-cut partitioner;
    the traced step keeps less than the eager one (pointwise work recomputed), and tracing the graphs themselves is
    not counted as the step's memory."""
    from ftstudio.engine.train.plan_run import trainer_loss

    config = hf_config(dict(TINY["llama"], vocab_size=4000))
    kw = dict(precision="bf16", block=512)
    eager = _trace_once(config, choices("llama", loss_fn=trainer_loss, **kw), False)
    compiled = _trace_once(config, choices("llama", compiled=True, loss_fn=trainer_loss.compiled, **kw), False)
    assert compiled["train_peak"] < eager["train_peak"]
    assert compiled["weights"] == eager["weights"] and compiled["gradients"] == eager["gradients"]
    logits_fp32 = 2 * 32 * 4000 * 4
    assert eager["train_peak"] - compiled["train_peak"] > logits_fp32     # the fp32 logits are never stored


def test_offloaded_block_inputs_are_not_counted_on_the_device():
    """Offload (the trainer's save_on_cpu around the forward, with reentrant checkpoints): each block's saved
    input lives in host memory until backward copies it back, so before the top block's backward the device holds
    the inputs of none of the blocks below it."""
    config = hf_config(TINY["llama"])
    ck = dict(checkpointing=True, reentrant=True, batch=4, seq_len=64)
    kept = _trace_once(config, choices("llama", **ck), False)
    off = _trace_once(config, choices("llama", offload=True, **ck), False)
    block_input = 4 * 64 * 64 * 4
    assert kept["first"] - off["first"] >= (TINY["llama"]["num_hidden_layers"] - 1) * block_input
    assert off["gradients"] == kept["gradients"]


def test_a_compiled_graph_drops_each_input_after_its_last_use():
    """As inductor's code does (args.clear(), buffers freed after their last use), a saved activation handed to a
    compiled backward graph dies once read, not when the graph ends; the caller's list is emptied."""
    from ftstudio.engine.memory.tracer.compiled import _run_freeing

    class Graph(torch.nn.Module):
        def forward(self, big, small):
            total = big.sum()
            return (small * 2 + total,)

    gm = torch.fx.symbolic_trace(Graph())
    live = LiveBytes()
    with live:
        args = [torch.ones(1 << 20), torch.ones(16)]          # 4 MiB, then 64 bytes
        out = _run_freeing(gm, args)
    assert args == [] and out[0].shape == (16,)
    assert live.live < 1 << 20                                 # the 4 MiB input is gone


def test_the_optimizer_state_is_planned_from_the_real_modules_parameters():
    """A config-only shape can miss tensors (a mixture of experts' 3-D expert weights: 300 M of 489 M parameters
    of a small Qwen3-MoE, which the H100 run under-planned by 8 %); the traced plan counts AdamW's two states of
    every parameter the real module has."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftstudio.core.config import RunConfig
    from ftstudio.engine.memory.plan import optimizer_bytes
    from ftstudio.engine.models import shape_from_config
    from ftstudio.engine.train.plan_run import RowFacts, plan_run

    cfg = dict(TINY["qwen3_moe"], num_hidden_layers=6)       # deeper than traced: the state is extrapolated too
    kind = cfg.pop("model_type")
    real = AutoModelForCausalLM.from_config(AutoConfig.for_model(kind, **cfg))
    state = sum(2 * 4 * p.numel() + 4 for p in real.parameters())           # exp_avg, exp_avg_sq, step
    rp = plan_run(RunConfig().replace(batch_size=2, seq_len=32), model_config={**cfg, "model_type": kind},
                  device="cuda", rows=RowFacts(4, 32, 1.0, False, 3))
    assert rp.plan.method == "traced" and rp.plan.optimizer == state
    # The closed form counts the experts too now (tests/test_shape_params.py): both answers agree.
    assert optimizer_bytes(shape_from_config({**cfg, "model_type": kind}), "adamw", 4) == state


@pytest.mark.parametrize("vocab,padded", [(4096, False), (4001, True)])
def test_a_fused_kernel_with_padded_rows_keeps_its_inputs_beside_its_output(vocab, padded):
    """The compiled head + loss's backward writes the logits' gradient in one fused kernel over the saved bf16
    logits: in place when the rows are aligned, as a second buffer when inductor pads them (GPT-2's 50257 words)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftstudio.engine.memory.tracer.compiled import aot
    from ftstudio.engine.train.loss import head_cross_entropy as _head_cross_entropy

    rows, dim = 512, 64
    live = LiveBytes()
    with FakeTensorMode():
        h = torch.zeros(rows, dim, dtype=torch.bfloat16, requires_grad=True)
        w = torch.zeros(vocab, dim, dtype=torch.bfloat16, requires_grad=True)
        t = torch.zeros(rows, dtype=torch.long)
        fn = aot(lambda h, w, t: _head_cross_entropy(h, w, None, t))
        with live:
            live.count([h, w])
            loss = fn(h, w, t)
            live.reset_peak()
            loss.backward()
    logits = rows * vocab * 2
    assert (live.peak >= 2 * logits) == padded, (live.peak, logits)
