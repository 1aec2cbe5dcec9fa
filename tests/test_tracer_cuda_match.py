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


def test_the_adamw_step_allocates_nothing_beside_its_states():
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
    assert step_transient(run.replace(optimizer="adamw8bit"), "cuda") > 0
