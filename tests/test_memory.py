"""The memory plan: each term by hand for a tiny config, and measure() == estimate() on a CPU run."""
import json
import math

import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.errors import ModelError
from ftstudio.engine import memory
from ftstudio.engine.memory import estimate, explain_oom, layer_bytes_per_token, optimizer_bytes, solve
from ftstudio.engine.memory import load_shape
from ftstudio.engine.models import shape_from_config

D, L, H, KV, I, V = 32, 2, 4, 2, 64, 100
TINY = {"model_type": "llama", "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": KV, "intermediate_size": I, "vocab_size": V, "tie_word_embeddings": False}
KVD = KV * (D // H)                                          # 16: k/v width under grouped-query attention
# embed + head + per layer (q, k, v, o, gate, up, down, 2 norms) + final norm
N = 2 * V * D + L * (D * D + 2 * KVD * D + D * D + 3 * I * D + 2 * D) + D
TENSORS = 2 + L * 9 + 1


def gpu_run(**leaves):
    return RunConfig().replace(device="cuda", **leaves)


def test_params_and_state_terms_by_hand():
    shape = shape_from_config(TINY)
    assert shape.params == N and len(shape.tensors) == TENSORS
    est = estimate(TINY, gpu_run(precision="bf16-mixed", optimizer="adamw"))
    assert est.weights == 4 * N and est.gradients == 4 * N
    assert est.optimizer == 8 * N + 4 * TENSORS              # exp_avg + exp_avg_sq + one fp32 step per tensor
    pure = estimate(TINY, gpu_run(precision="bf16", optimizer="adamw"))
    # pure bf16 AdamW is CompensatedAdamW: two bf16 moments (stochastic rounding), + a bf16 Kahan buffer
    assert (pure.weights, pure.gradients, pure.optimizer) == (2 * N, 2 * N, 4 * N + 4 * TENSORS)
    kahan = estimate(TINY, gpu_run(precision="bf16", optimizer="adamw", bf16_rounding="kahan"))
    assert kahan.optimizer == 6 * N + 4 * TENSORS
    assert estimate(TINY, gpu_run(optimizer="sgd")).optimizer == 4 * N
    # Adafactor: rows + columns per matrix, full vectors, plus the step
    fact = sum((s[0] + s[1]) if len(s) == 2 else s[0] for s in shape.tensors.values())
    assert estimate(TINY, gpu_run(optimizer="adafactor")).optimizer == 4 * fact + 4 * TENSORS
    # 8-bit: tensors of ≥ 4096 values in uint8 + an fp32 absmax per 256; smaller ones stay fp32
    big = [math.prod(s) for s in shape.tensors.values() if math.prod(s) >= 4096]
    small = [math.prod(s) for s in shape.tensors.values() if math.prod(s) < 4096]
    assert optimizer_bytes(shape, "adamw8bit", 4) == sum(2 * n + 8 * math.ceil(n / 256) for n in big) + 8 * sum(small)


def test_activation_terms_by_hand():
    shape = shape_from_config(TINY)
    # bf16-mixed: 2 RMSNorms (fp32 input + fp32 normalised = 8d each), q/k/v inputs cast to bf16 (3·2d),
    # SDPA q, k, v, out (2d + 2·2kv + 2d), o_proj input (2d), gate/up inputs (2·2d), SwiGLU (4·2i)
    assert layer_bytes_per_token(shape, "bf16-mixed", 64) == 16 * D + 6 * D + 4 * D + 4 * KVD + 2 * D + 4 * D + 8 * I
    assert layer_bytes_per_token(shape, "bf16", 64) == 12 * D + 2 * D + 4 * D + 4 * KVD + 2 * D + 2 * D + 8 * I
    b, s = 2, 64
    T = b * s
    est = estimate(TINY, gpu_run(batch_size=b, seq_len=s, precision="bf16-mixed"))
    per = layer_bytes_per_token(shape, "bf16-mixed", s)
    head = T * (8 * D + 2 * D) + T * (16 + 8 * (D // H))
    cast = 2 * (N - V * D - (2 * L + 1) * D)                 # bf16 copies of every matmul weight (not the lookup table)
    states = 4 * N + 8 * N + 4 * TENSORS
    loss_bwd = states + cast + T * L * per + head + 12 * T * V
    assert est.parts["phase:loss backward"] == loss_bwd
    assert est.parts["phase:loss forward"] == states + cast + T * L * per + head + 10 * T * V
    assert est.peak_allocated == max(v for k, v in est.parts.items() if k.startswith("phase:"))
    assert est.total == est.weights + est.gradients + est.optimizer + est.activations + est.other
    assert est.other == memory.CUDA_CONTEXT + est.peak_reserved - est.peak_allocated
    assert est.textbook == 16 * N + s * b * D * L * 12


def test_each_option_moves_the_right_term():
    base = estimate(TINY, gpu_run(batch_size=8, seq_len=512))
    ckpt = estimate(TINY, gpu_run(batch_size=8, seq_len=512, activation_checkpointing=True))
    assert ckpt.parts["layers"] == 8 * 512 * L * 4 * D        # only each block's fp32 input is kept
    # a 100-token vocabulary: slicing the loss costs more (the kept hidden states) than it saves
    chunked = estimate(TINY, gpu_run(batch_size=8, seq_len=512, loss="chunked"))
    assert chunked.parts["loss"] > base.parts["loss"]
    accum = estimate(TINY, gpu_run(batch_size=8, seq_len=512, grad_accum=4))
    assert accum.parts["phase:loss backward"] == base.parts["phase:loss backward"] + base.gradients
    fsdp = estimate(TINY, gpu_run(batch_size=8, seq_len=512), gpus=4)
    assert fsdp.weights == base.weights // 4 and fsdp.optimizer == base.optimizer // 4
    l2sp = estimate(TINY, gpu_run(l2sp=0.1))
    ewc_bf16 = estimate(TINY, gpu_run(ewc=0.1, l2sp_anchor="bf16"))
    assert l2sp.anchor == 4 * N and ewc_bf16.anchor == 2 * 2 * N   # θ0 (and the Fisher) copies
    assert estimate(TINY, gpu_run(l2sp=0.1, l2sp_anchor="cpu")).anchor == 0
    big = dict(TINY, vocab_size=150_000, hidden_size=256, intermediate_size=512)
    full = estimate(big, gpu_run(batch_size=8, seq_len=2048))
    assert full.parts["loss"] == 12 * 8 * 2048 * 150_000       # fp32 logits + their gradients dominate
    assert estimate(big, gpu_run(batch_size=8, seq_len=2048, loss="chunked")).total < full.total / 3


def test_encoder_loss_is_over_labels():
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2}
    est = estimate(bert, gpu_run(batch_size=4, seq_len=128))
    assert est.parts["loss"] == 4 * 128 * 4 * 32             # no vocabulary-sized logits


def test_solver_finds_the_edge_and_ranks_changes():
    big = dict(TINY, vocab_size=150_000, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    run = gpu_run(batch_size=8, seq_len=2048)
    cap = 40 * 10**9
    adv = solve(big, run, cap)
    assert not adv.fits and adv.max_batch_size >= 1
    budget = cap * 0.95
    assert estimate(big, run.replace(batch_size=adv.max_batch_size)).total <= budget
    assert estimate(big, run.replace(batch_size=adv.max_batch_size + 1)).total > budget
    assert estimate(big, run.replace(seq_len=adv.max_seq_len)).total <= budget
    assert estimate(big, run.replace(seq_len=adv.max_seq_len + 128)).total > budget
    savings = [s for _, s, _ in adv.savings]
    fits = [ok for _, _, ok in adv.savings]
    assert fits == sorted(fits, reverse=True)                 # changes that make it fit come first
    assert any("chunked loss" in s for s in adv.suggestions) and all(s > 0 for s in savings)
    reason, advice = explain_oom(big, run, 1, cap, 39 * 10**9)
    assert "predicted a peak of" in reason and "39.0 GB" in reason and "40.0 GB card" in reason
    assert advice.startswith("To make it fit:") and "batch size" in advice


def test_longest_sequence_stops_at_the_models_context():
    """A card with room for far longer rows than the model was made for: the solver names the model's context
    (learned positions end there), not a length the model cannot take; a context that does not fit is searched."""
    run = gpu_run(batch_size=1, seq_len=128)
    for context in (300, 4096):
        cfg = dict(TINY, max_position_embeddings=context)
        assert solve(cfg, run, 80 * 10**9).max_seq_len == context
        assert solve(shape_from_config(cfg), run, 80 * 10**9).max_seq_len == context
    wide = dict(TINY, max_position_embeddings=1 << 20)
    found = solve(wide, run, 2 * 10**9).max_seq_len
    assert 128 <= found < 1 << 20 and estimate(wide, run.replace(seq_len=found)).total <= 2 * 10**9 * 0.95
    from ftstudio.engine.memory.report import estimate_report, format_report
    report = estimate_report(model_config=dict(TINY, max_position_embeddings=300), run_config=run, seq_len=128,
                             gpu_memory_gb=80)
    assert "longest sequence 300 (the model's context)" in format_report(report)


def test_measure_equals_estimate_on_cpu(tiny_llama, tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    for folder in (tiny_llama, tiny_gpt2):
        cfg = json.loads((folder / "config.json").read_text())
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        assert shape_from_config(cfg).params == sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randint(0, cfg["vocab_size"], (2, 16))
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        snap = memory.measure(model, opt, "cpu", step=1)
        est = estimate(cfg, RunConfig().replace(device="cpu", precision="fp32", optimizer="adamw"))
        assert (snap.weights, snap.gradients, snap.optimizer) == (est.weights, est.gradients, est.optimizer)
        assert snap.activations is None and snap.allocated_peak is None and est.other == 0


def test_bert_classifier_param_count(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification

    cfg = json.loads((tiny_bert / "config.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2, dtype=torch.float32)
    assert shape_from_config(cfg).params == sum(p.numel() for p in model.parameters())


def test_load_shape_reads_safetensors_and_errors(tiny_llama, tmp_path):
    shape, cfg = load_shape(str(tiny_llama))
    assert shape.exact and shape.params == shape_from_config(cfg).params
    assert load_shape(str(tiny_llama / "config.json"))[0].params == shape.params
    with pytest.raises(ModelError, match="no such file or folder"):
        load_shape(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="line 1, column 2: config.json is not valid JSON"):
        load_shape(str(tmp_path))
    with pytest.raises(ModelError, match="cannot read config.json"):
        load_shape(str(tmp_path / "config.json"))
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_shape("nobody/no-such-model-xyz")


def test_chunked_loss_equals_full_loss(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    from ftstudio.engine.train.loss import causal_lm_loss, chunked_cross_entropy
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    labels = x.clone()
    labels[0, :5] = -100
    batch = {"input_ids": x, "labels": labels}
    full = causal_lm_loss(model, batch, chunked=False)
    chunked = causal_lm_loss(model, batch, chunked=True)
    assert torch.allclose(full, chunked, atol=1e-5)
    hidden = model.model(input_ids=x).last_hidden_state
    small = chunked_cross_entropy(hidden, model.lm_head, labels, chunk=7)   # slices that do not divide evenly
    small.backward()
    assert torch.allclose(small, full, atol=1e-5) and model.lm_head.weight.grad is not None
