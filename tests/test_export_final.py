"""final/ is what a user loads and generates with: it stops at the end of a turn, carries the chat template it
was trained with, caches keys and values again, and keeps the base model's stored dtype."""
import json

import pytest
import torch
from safetensors import safe_open

from ftstudio.core.config import RunConfig
from ftstudio.core.events import RunFinished
from ftstudio.engine.data.render import FALLBACK_CHAT_TEMPLATE
from ftstudio.engine.train import Trainer

CHAT = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes good"}]}


def _train(model, tmp_path, name="r", rows=CHAT, **kw):
    data = tmp_path / f"{name}.jsonl"
    data.write_text((json.dumps(rows) + "\n") * 8)
    cfg = RunConfig().replace(source=str(model), dataset=str(data), output=str(tmp_path / "runs"), run_name=name,
                              max_steps=2, batch_size=4, seq_len=32, device="cpu", precision="fp32",
                              val_fraction=0.0, eval_every=0, **kw)
    result = Trainer(cfg, lambda e: None).run()
    assert isinstance(result, RunFinished), result
    return tmp_path / "runs" / name / "final"


def _dtypes(final):
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_generation_config_stops_at_the_end_of_a_turn_and_at_eos(tiny_llama, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    final = _train(tiny_llama, tmp_path)
    tok = AutoTokenizer.from_pretrained(final)
    gen = GenerationConfig.from_pretrained(final)
    stops = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    assert set(stops) == {tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")}
    assert gen.pad_token_id == tok.pad_token_id
    assert tok.chat_template  # the model's own template travels with it


def test_the_fallback_template_is_saved_when_the_tokenizer_had_none(tiny_llama_no_template, tmp_path):
    from transformers import AutoTokenizer

    final = _train(tiny_llama_no_template, tmp_path)
    assert AutoTokenizer.from_pretrained(final).chat_template == FALLBACK_CHAT_TEMPLATE


def test_text_runs_do_not_invent_a_template(tiny_llama_no_template, tmp_path):
    from transformers import AutoTokenizer

    final = _train(tiny_llama_no_template, tmp_path, rows={"text": "the cat is good"})
    assert not AutoTokenizer.from_pretrained(final).chat_template


def test_use_cache_is_restored(tiny_llama, tmp_path):
    """Packed rows under flex_attention turn the KV cache off for training (trainer/speed.choose_attention);
    the export writes the base model's setting back."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.engine.models.export import export_options, save_final

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    options = export_options(RunConfig(), "float32", model, "chat", tok)
    model.config.use_cache = False
    save_final(model, tok, tmp_path / "final", **options)
    assert json.loads((tmp_path / "final" / "config.json").read_text())["use_cache"] is True


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny import save_tiny_llama

    src = save_tiny_llama(tmp_path_factory.mktemp("f32") / "m")
    out = tmp_path_factory.mktemp("bf16") / "m"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)  # as hub checkpoints are
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def test_weights_keep_the_stored_dtype_unless_asked(bf16_llama, tmp_path):
    assert _dtypes(_train(bf16_llama, tmp_path, "auto")) == {"BF16"}          # trained in fp32 on the CPU
    assert _dtypes(_train(bf16_llama, tmp_path, "f32", export_dtype="float32")) == {"F32"}
