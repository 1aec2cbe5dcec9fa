"""The memory plan of the speed/size options against peaks measured on the H200 (allocator peaks, GB, from
tests/benchmarks/results/throughput_session2.jsonl and throughput.md): compiled blocks, the compiled head +
loss, pure bf16 with stochastic or Kahan AdamW, 8-/4-bit states inside backward with offloaded checkpoints."""
import pytest

from ftstudio.core.config import RunConfig
from ftstudio.core.presets import apply_preset
from ftstudio.engine.memory import estimate

LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)
LLAMA_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
QWEN_14B = dict(model_type="qwen2", hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                num_attention_heads=40, num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False)
QWEN_32B = dict(QWEN_14B, intermediate_size=27648, num_hidden_layers=64)

ROWS = [  # (shape, batch, seq, preset, overrides, measured peak allocated GB); Fastest's rows ran compiled
    (LLAMA_1B, 4, 2048, None, dict(precision="bf16-mixed", compile=True, loss="full"), 30.65),
    (LLAMA_1B, 4, 2048, None, dict(precision="bf16-mixed", compile=True, loss="chunked"), 29.08),
    (LLAMA_1B, 4, 2048, "fastest", dict(compile=True, packing=True), 20.2),
    (LLAMA_8B, 2, 4096, "fastest", dict(compile=True, packing=True), 88.21),
    (LLAMA_8B, 1, 4096, "fastest", dict(compile=True, loss="chunked", bf16_rounding="kahan"), 84.04),
    (LLAMA_8B, 2, 4096, "fastest", dict(compile=True, loss="chunked", bf16_rounding="kahan"), 102.71),
    (LLAMA_8B, 1, 4096, "largest", {}, 37.78),
    (QWEN_14B, 1, 4096, "largest", {}, 67.72),
    (QWEN_32B, 1, 2048, "largest", dict(optimizer="adamw4bit"), 120.87),
]


@pytest.mark.parametrize("shape,batch,seq,preset,overrides,measured", ROWS)
def test_plan_is_within_ten_percent_of_the_h200_peak(shape, batch, seq, preset, overrides, measured):
    run = RunConfig().replace(device="cuda", batch_size=batch, seq_len=seq)
    if preset:
        run = apply_preset(run, preset)
    plan = estimate(shape, run.replace(**overrides)).peak_allocated / 1e9
    assert -0.03 <= (plan - measured) / measured <= 0.10, f"plan {plan:.1f} GB vs measured {measured} GB"


def test_the_32b_moonshot_fits_one_h200_only_with_4bit_states():
    run = apply_preset(RunConfig().replace(device="cuda", seq_len=2048), "largest")
    budget = 141e9 * 0.95
    assert estimate(QWEN_32B, run.replace(optimizer="adamw4bit")).total <= budget
    assert estimate(QWEN_32B, run).total > budget                     # 8-bit states: 33 GB more
