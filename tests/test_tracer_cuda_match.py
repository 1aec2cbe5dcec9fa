"""What the tracer (engine/memory/tracer/) does as the CUDA step does, where fake CPU tensors would not: autograd's
input buffer summing two gradients of one tensor in place, dropout's bool mask, and an AdamW step that updates in
place (each found from the H100's rows in tests/benchmarks/results/plan_vs_measured.md)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ftstudio.engine.memory.tracer import LiveBytes
from ftstudio.engine.memory.tracer.rules import CudaAutocastRules


def _tied_step(fake: bool) -> tuple[int, int]:
    """A tied embedding and head (one (V, d) tensor used twice): the peak of its backward, and the bytes of w."""
    from contextlib import nullcontext

    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() if fake else nullcontext():
        w = torch.zeros(4096, 64, requires_grad=True)
        ids = torch.zeros(2, 4, dtype=torch.long)
        live = LiveBytes()
        with live:
            live.count([w])
            # the head reads a cast of w, as under autocast: its gradient comes back as a new tensor, not a view
            F.linear(F.embedding(ids, w).bfloat16(), w.bfloat16()).sum().backward()
        return live.peak, w.numel() * 4


@pytest.mark.parametrize("fake", [True, False])
def test_two_gradients_of_one_tensor_are_summed_in_place(fake):
    """The head's gradient waits in autograd's input buffer until the embedding's arrives; CUDA (and the CPU, on
    plain tensors) adds the second into the first in place (input_buffer.cpp, can_accumulate_inplace), which a
    fake tensor, a tensor subclass, never passes, nor any tensor while a dispatch mode (the tracker) is active:
    counted as traced, the tied gradient was held three times (aten::add_ on plain CPU tensors, in a profile)."""
    peak, w = _tied_step(fake)
    assert peak < 3.2 * w                        # weight + head's gradient + embedding's, no third copy for the sum
    assert peak >= 3 * w


def test_the_fake_and_the_real_tied_step_peak_alike():
    assert _tied_step(True)[0] == _tied_step(False)[0]


def test_dropout_keeps_cudas_bool_mask():
    """CUDA's dropout (native_dropout) saves a one-byte mask; the CPU's composite kept a noise tensor of the
    input's dtype: in bf16 the traced dropout kept 2 bytes a value more than CUDA's."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.zeros(1000, 1000, dtype=torch.bfloat16, requires_grad=True)
        y = x * 2
        live = LiveBytes()
        with live, CudaAutocastRules(torch.bfloat16):
            out = F.dropout(y, 0.1, training=True)
        assert live.live == 1000 * 1000 * (2 + 1)            # the output and its bool mask
        assert type(out.grad_fn).__name__.startswith("NativeDropoutBackward")
        with live, CudaAutocastRules(torch.bfloat16):
            assert F.dropout(y, 0.1, training=False) is y      # evaluation: nothing dropped, nothing kept


def test_the_adamw_step_allocates_nothing_beside_its_states(monkeypatch):
    """torch's fused AdamW (fp32 weights) and the Triton bf16 kernel update in place: the optimizer step's phase is
    weights + gradients + states (+ cuBLAS's workspaces); torchao's 8-bit step still dequantises one tensor."""
    from ftstudio.core.config import RunConfig
    from ftstudio.engine.memory.plan import CUBLAS_WORKSPACES
    from ftstudio.engine.memory.traced import plan, step_transient

    config = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=300, max_position_embeddings=256)
    run = RunConfig().replace(batch_size=2, seq_len=32, device="cuda", precision="bf16-mixed", optimizer="adamw")
    p = plan(config, run, device="cuda")
    assert p.method == "traced"
    assert p.parts["phase:optimizer step"] == p.weights + p.gradients + p.optimizer + p.anchor + CUBLAS_WORKSPACES
    assert step_transient(run.replace(precision="bf16"), "cuda") == 0
    assert step_transient(run.replace(precision="bf16", bf16_rounding="kahan"), "cuda") > 0
    assert step_transient(run.replace(optimizer="adamw8bit"), "cuda") == 0    # ours: one pass in registers
    import ftstudio.engine.memory.traced as traced_mod
    monkeypatch.setattr(traced_mod, "lowbit_for", lambda run, probe: "torchao")
    assert step_transient(run.replace(optimizer="adamw8bit"), "cuda") > 0     # torchao dequantises a tensor


def test_a_compiled_heads_transposed_gradient_is_summed_in_place():
    """A compiled head returns the weight's gradient as a permute of an mm here; inductor returns a tensor of its
    own (its buffer freed), which autograd sums in place with the embedding's: no third (V, d) copy."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftstudio.engine.memory.tracer import aot

    head = aot(lambda h, w: F.linear(h, w).float().logsumexp(-1).sum())
    with FakeTensorMode():
        w = torch.zeros(4096, 64, dtype=torch.bfloat16, requires_grad=True)
        ids = torch.zeros(2, 4, dtype=torch.long)
        live = LiveBytes()
        with live:
            live.count([w])
            head(F.embedding(ids, w).reshape(-1, 64), w).backward()
        wb = w.numel() * 2
        assert live.peak < 3.2 * wb                     # weight + head's gradient + embedding's, summed in place


def test_a_view_is_never_memory_of_its_own():
    """A view shares its input's storage. AOTAutograd keeps views of each compiled graph's traced outputs for the
    function's lifetime; first seen through the view, they were counted as a block-sized activation per block."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        made_before = torch.zeros(1024, 1024)           # made where nothing counts it (as at compile time)
        live = LiveBytes()
        with live:
            v = made_before.view(made_before.shape)
            t = made_before.t()
            fresh = made_before + 1
        assert live.live == fresh.numel() * 4          # the new tensor only, not the views
        del v, t


def test_a_compiled_block_counts_the_same_on_its_first_and_later_calls():
    """The first call of a compiled block also compiles it: nothing made there stays counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftstudio.engine.memory.tracer import aot

    block = aot(lambda x, w: torch.relu(x @ w) + x)
    with FakeTensorMode():
        w = torch.zeros(256, 256, requires_grad=True)
        live = LiveBytes()
        with live:
            live.count([w])
            grew = []
            outs = []
            for _ in range(2):
                before = live.live
                outs.append(block(torch.zeros(512, 256, requires_grad=True), w))
                grew.append(live.live - before)
        assert grew[0] == grew[1]


def test_a_classifiers_batch_has_a_mask_only_when_its_rows_are_padded():
    """transformers drops an all-ones mask before SDPA: rows of one length attend as unpadded rows do."""
    from ftstudio.engine.memory.tracer import StepChoices
    from ftstudio.engine.memory.tracer.step import _batch

    plain = _batch(None, StepChoices(batch=2, seq_len=8, task="classification"))
    padded = _batch(None, StepChoices(batch=2, seq_len=8, task="classification", padded=True))
    assert "attention_mask" not in plain and plain["labels"].shape == (2,)
    assert padded["attention_mask"].sum() == 15


def test_an_eager_step_keeps_the_kv_cache_the_model_builds_in_training():
    """The trainer turns the KV cache off only where it compiles; GPT-2 copies each block's keys and values into
    its cache in a training forward (torch.cat), and SDPA saves those copies for backward (on an H100, GPT-2 at
    8 × 1024 held 24 of them, 0.30 GB, at its peak): the traced eager step builds the cache too."""
    import ftstudio.engine.memory.tracer.live as live_mod
    from ftstudio.engine.memory.tracer import StepChoices, hf_config
    from ftstudio.engine.memory.tracer.step import _trace_once
    from ftstudio.engine.train.loss import causal_lm_loss

    cats = []
    dispatch = live_mod.LiveBytes.__torch_dispatch__

    def counting(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.cat.default:
            cats.append(func)
        return dispatch(self, func, types, args, kwargs)

    cfg = dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=256,
               bos_token_id=0, eos_token_id=0)
    choices = StepChoices(batch=2, seq_len=16, precision="fp32", block=1, loss_fn=causal_lm_loss)
    counts = {}
    live_mod.LiveBytes.__torch_dispatch__ = counting
    try:
        for cache in (True, False):
            cats.clear()
            _trace_once(hf_config({**cfg, "use_cache": cache}), choices, False)
            counts[cache] = len(cats)
    finally:
        live_mod.LiveBytes.__torch_dispatch__ = dispatch
    assert counts[True] >= counts[False] + 2 * 2          # keys and values of both blocks, in training and eval


def test_a_classifiers_rows_are_planned_padded_only_when_their_lengths_differ(tiny_bert, tmp_path):
    """read_rows: a classifier's rows of one length (cut at seq_len) are planned without a mask; rows of different
    lengths with one (a shuffled batch holding the longest row then pads)."""
    import json

    from test_trainer import lm_config

    from ftstudio.engine.train.plan_run import read_rows

    def facts(texts):
        path = tmp_path / f"c{len(texts[0])}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": ["a", "b"][i % 2]}) + "\n"
                                for i, t in enumerate(texts)))
        return read_rows(lm_config(tiny_bert, path, tmp_path / "runs", seq_len=8, val_fraction=0.0))

    long = " ".join(["the party shall terminate"] * 8)          # longer than seq_len: every row is cut to 8
    assert not facts([long] * 12).padded
    assert facts([long if i % 2 else "liability" for i in range(12)]).padded
