"""GGUF export (`ftstudio export RUN_DIR --gguf OUT.gguf`): a tiny Llama and a tiny Qwen2, fine-tuned two steps,
load back through transformers with the logits of final/, the chat template and the eos / end-of-turn tokens in
the metadata; q8_0 loads and generates; what cannot be exported is refused by name and nothing is written."""
import json

import pytest

from ftstudio.cli import main
from tiny import save_tiny_causal_bpe, save_tiny_gpt2

gguf = pytest.importorskip("gguf")

CHATS = [("hello", "good day"), ("one two", "three four"), ("the cat", "a dog"), ("yes", "no"),
         ("sun", "moon"), ("question", "answer")]


def write_chats(path, n=24):
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            q, a = CHATS[i % len(CHATS)]
            fh.write(json.dumps({"messages": [{"role": "user", "content": q},
                                              {"role": "assistant", "content": a}]}) + "\n")
    return path


def fine_tune(model, tmp_path, name):
    data = write_chats(tmp_path / "chats.jsonl")
    code = main(["train", "--model", str(model), "--dataset", str(data), "--max-steps", "2", "--batch-size", "4",
                 "--seq-len", "32", "--lr", "1e-3", "--device", "cpu", "--output", str(tmp_path / "runs"),
                 "--run-name", name, "--eval-every", "0", "--quiet"])
    assert code == 0
    return tmp_path / "runs" / name


def metadata(path):
    reader = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.tokens")
            and k not in ("tokenizer.ggml.merges", "tokenizer.ggml.token_type")}, reader


def logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fine_tuned_model_round_trips_through_gguf_f16(arch, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = fine_tune(save_tiny_causal_bpe(tmp_path / "base", arch), tmp_path, arch)
    out = tmp_path / "out" / f"{arch}.gguf"
    assert main(["export", str(run_dir), "--gguf", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"Wrote {out} ({arch}, f16" in said and "chat template included" in said
    assert not list(out.parent.glob("*.part"))

    meta, reader = metadata(out)
    final = run_dir / "final"
    tok = AutoTokenizer.from_pretrained(final)
    assert meta["general.architecture"] == arch and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert "tokenizer.ggml.eot_token_id" not in meta       # the template's end of turn is eos itself here
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight", "blk.1.attn_q.weight"}
    assert reader.tensors[0].tensor_type in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32)

    original = AutoModelForCausalLM.from_pretrained(final).eval()
    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    a, b = logits(original, ids), logits(loaded, ids)
    assert (a - b).abs().max() <= 1e-2 * a.abs().max()
    back = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    text = "the contract shall terminate, hello world"
    assert back(text)["input_ids"] == tok(text)["input_ids"] and back.eos_token == "<|im_end|>"


def test_q8_0_and_bf16_load_and_generate_and_eot_is_written_when_it_differs(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.engine.models.gguf_export import export_gguf

    # A base model's tokenizer: eos is <|endoftext|>, while the chat template ends a turn with <|im_end|>.
    model_dir = save_tiny_causal_bpe(tmp_path / "m", "qwen2", eos="<|endoftext|>", tie=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok("the cat and the dog")["input_ids"]
    (tmp_path / "g").mkdir()                                # an existing folder: <name>-<type>.gguf inside
    for kind, tolerance in (("q8_0", 5e-2), ("bf16", 2e-2)):
        result = export_gguf(model_dir, tmp_path / "g", kind)
        assert result.path.endswith(f"m-{kind}.gguf")
        meta, reader = metadata(result.path)
        assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|endoftext|>")
        assert meta["tokenizer.ggml.eot_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert "output.weight" not in types                 # tied: llama.cpp reuses token_embd
        assert types["blk.0.attn_q.weight"] == getattr(gguf.GGMLQuantizationType, kind.upper())
        assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "g", gguf_file=f"m-{kind}.gguf").eval()
        a, b = logits(ref, ids), logits(loaded, ids)
        assert (a - b).abs().max() <= tolerance * a.abs().max()
        import torch
        new = loaded.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert new.shape == (1, len(ids) + 4) or new.shape[1] > len(ids)


def test_what_cannot_be_exported_is_refused_by_name_and_nothing_is_written(tmp_path, tiny_llama, capsys):
    out = tmp_path / "x.gguf"
    gpt2 = save_tiny_gpt2(tmp_path / "gpt2")
    assert main(["export", str(gpt2), "--gguf", str(out)]) == 2
    err = capsys.readouterr().err
    assert "architecture GPT2LMHeadModel cannot be exported to GGUF yet; supported: LlamaForCausalLM, " \
           "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM" in err and "Traceback" not in err
    assert main(["export", str(tiny_llama), "--gguf", str(out)]) == 2   # its tokenizer is word-level
    assert "its tokenizer is WordLevel" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--gguf", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    run = tmp_path / "stopped"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    assert main(["export", str(run), "--gguf", str(out)]) == 2
    assert "has no final/ model" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    from ftstudio.engine.models.gguf_export import export_gguf

    model_dir = save_tiny_causal_bpe(tmp_path / "m", "llama")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    result = export_gguf(model_dir, tmp_path / "m.gguf")
    _, reader = metadata(result.path)
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    head_dim = 64 // 4
    assert len(freqs) == head_dim // 2 and freqs[0] == 1.0 and freqs[-1] == 8.0   # fast ones kept, slow ones scaled


def test_a_gguf_path_written_as_a_folder_gets_the_file_inside_it(tmp_path, capsys):
    model_dir = save_tiny_causal_bpe(tmp_path / "m", "llama")
    new = tmp_path / "exports"            # not there yet: the trailing separator says it is a folder
    assert main(["export", str(model_dir), "--gguf", f"{new}/"]) == 0, capsys.readouterr().err
    assert new.is_dir() and (new / "m-f16.gguf").is_file() and (new / "m-f16.Modelfile").is_file()
    assert main(["export", str(model_dir), "--gguf", f"{new}/", "--gguf-type", "q8_0"]) == 0
    assert sorted(p.name for p in new.glob("*.gguf")) == ["m-f16.gguf", "m-q8_0.gguf"]   # nothing overwritten
