"""The export gate on architectures whose tensors transformers renames or splits when it saves them: GPT-NeoX
(Pythia: ``lm_head`` in memory, ``embed_out`` on disk) and the MoE families (Mixtral, Qwen3-MoE: experts fused in
memory, one tensor per expert on disk). Their exports were refused as "not the trained model" after training."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ftstudio.core.errors import ModelError
from ftstudio.engine.models import gate


def _tiny(arch: str, path):
    import transformers as T

    from tiny import make_tokenizer

    tok = make_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    moe = dict(num_key_value_heads=2, head_dim=8)
    cfg, cls = {
        "gpt_neox": (lambda: T.GPTNeoXConfig(**common), T.GPTNeoXForCausalLM),
        "mixtral": (lambda: T.MixtralConfig(**common, **moe, num_local_experts=4, num_experts_per_tok=2),
                    T.MixtralForCausalLM),
        "qwen3_moe": (lambda: T.Qwen3MoeConfig(**common, **moe, moe_intermediate_size=16, num_experts=4,
                                               num_experts_per_tok=2, tie_word_embeddings=True),
                      T.Qwen3MoeForCausalLM),
    }[arch]
    torch.manual_seed(0)
    cls(cfg()).save_pretrained(path)
    tok.save_pretrained(path)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path)   # as the trainer loads it: conversions attached
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, tok


@pytest.mark.parametrize("arch", ["gpt_neox", "mixtral", "qwen3_moe"])
def test_an_export_of_a_renamed_or_split_architecture_passes_the_gate(arch, tmp_path, monkeypatch):
    from ftstudio.engine.models.export import save_final

    monkeypatch.setenv("FTSTUDIO_EXPORT_GATE", "1")
    model, tok = _tiny(arch, tmp_path / "base")
    save_final(model, tok, tmp_path / "final")   # the gate (logits probe) runs inside; it raised for these before
    monkeypatch.setattr(gate, "PROBE_MAX_PARAMS", 10)   # the key check alone (models too large to load twice)
    assert "match the architecture built in a fresh process" in gate.check_export(tmp_path / "final", model, tok)


def test_a_missing_expert_on_disk_is_still_named(tmp_path):
    model, tok = _tiny("mixtral", tmp_path / "base")
    model.save_pretrained(tmp_path / "final")
    path = tmp_path / "final" / "model.safetensors"
    weights = load_file(path)
    gone = next(k for k in weights if ".experts.2." in k)
    del weights[gone]
    save_file(weights, path, metadata={"format": "pt"})
    with pytest.raises(ModelError, match=rf"1 tensors missing \(e.g. {gone}\)"):
        gate.check_export(tmp_path / "final", model, tok)


def test_saved_shapes_names_what_save_pretrained_writes(tmp_path):
    model, _ = _tiny("gpt_neox", tmp_path / "base")
    saved = gate.saved_shapes(model, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert "embed_out.weight" in saved and "lm_head.weight" not in saved
    assert saved["embed_out.weight"] == tuple(model.lm_head.weight.shape)
