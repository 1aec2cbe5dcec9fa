"""GGUF export of every architecture in gguf_arch.py, on tiny models built here: the file loads back through
transformers' GGUF reader with the logits of the original folder and a tokenizer giving the same ids (added
tokens included); each family's llama.cpp keys and tensor changes are in the file; the SentencePiece scores
make llama.cpp's merge-by-score tokenizer (a plain re-implementation below) give tokenizer.json's ids; the
Modelfile carries the template, the default system prompt and the stops."""
import json

import pytest

from ftstudio.cli import main
from tiny import make_bpe_tokenizer
from tiny_gguf import save_tiny

gguf = pytest.importorskip("gguf")

# Words the tiny tokenizers were not trained on: their pieces depend on the order of the merges.
UNSEEN = "thence the catalogue of partying dogmatic answering questionable assistants"
PROBES = ["the cat é€ 12 <think> x", UNSEEN, "Hello World, the contract shall terminate!", "  two  spaces\n\nnew",
          "<|im_start|>user\nhi<|im_end|>", "<start_of_turn>user\nhi<end_of_turn>", "<|user|>\nhi<|end|>"]


def read(path):
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items()
            if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                         "tokenizer.ggml.scores")}
    return meta, {t.name: t for t in reader.tensors}, reader


def logits(model, ids):
    import torch
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def export(model_dir, out, capsys):
    assert main(["export", str(model_dir), "--gguf", str(out)]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("arch,gguf_arch,tokenizer", [("mistral", "llama", "llama"), ("qwen3", "qwen3", "gpt2"),
                                                      ("gemma2", "gemma2", "llama"), ("gemma3", "gemma3", "llama"),
                                                      ("phi3", "phi3", "llama")])
def test_each_architecture_round_trips_through_transformers(arch, gguf_arch, tokenizer, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_tiny(tmp_path / "m", arch)
    out = tmp_path / "out" / f"{arch}.gguf"
    said = export(model_dir, out, capsys)
    assert f"({gguf_arch}, f16, {tokenizer} tokenizer" in said and "--jinja" in said and "template translated" in said

    meta, tensors, _ = read(out)
    assert meta["general.architecture"] == gguf_arch and meta["tokenizer.ggml.model"] == tokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    original = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    loaded = AutoModelForCausalLM.from_pretrained(out.parent, gguf_file=out.name).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "hello, the contract"}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    a, b = logits(original, ids), logits(loaded, ids)
    assert (a - b).abs().max() <= 1e-2 * a.abs().max()
    back = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
    for text in PROBES:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
    assert back.eos_token == tok.eos_token

    modelfile = (out.parent / f"{arch}.Modelfile").read_text()
    assert f"FROM ./{arch}.gguf" in modelfile and 'TEMPLATE """' in modelfile
    eot = meta.get("tokenizer.ggml.eot_token_id", meta["tokenizer.ggml.eos_token_id"])
    assert f'PARAMETER stop "{tok.convert_ids_to_tokens(eot)}"' in modelfile


def test_family_keys_and_tensor_changes_are_llama_cpps(tmp_path):
    from safetensors.torch import load_file

    from ftstudio.engine.models.gguf_export import export_gguf

    g2 = save_tiny(tmp_path / "g2", "gemma2")
    meta, tensors, _ = read(export_gguf(g2, tmp_path / "g2.gguf").path)
    cfg = json.loads((g2 / "config.json").read_text())
    assert meta["gemma2.attn_logit_softcapping"] == cfg["attn_logit_softcapping"]
    assert meta["gemma2.final_logit_softcapping"] == cfg["final_logit_softcapping"]
    assert meta["gemma2.attention.sliding_window"] == 64 and meta["gemma2.attention.key_length"] == 256
    assert meta["tokenizer.ggml.add_space_prefix"] is False and meta["tokenizer.ggml.add_bos_token"] is True
    weights = load_file(str(g2 / "model.safetensors"))
    norm = weights["model.layers.0.pre_feedforward_layernorm.weight"].float().numpy()
    assert abs(tensors["blk.0.ffn_norm.weight"].data - (norm + 1)).max() < 1e-6   # Gemma's 1 + w, stored whole
    assert "output.weight" not in tensors                                           # Gemma's head is the embedding

    p3 = save_tiny(tmp_path / "p3", "phi3")
    meta, tensors, _ = read(export_gguf(p3, tmp_path / "p3.gguf").path)
    assert tensors["blk.0.attn_qkv.weight"].shape.tolist() == [64, 64 + 2 * 32]     # fused, as llama.cpp keeps it
    assert tensors["blk.0.ffn_up.weight"].shape.tolist() == [64, 2 * 128]           # gate and up together
    assert meta["phi3.rope.dimension_count"] == 16 and meta["phi3.attention.sliding_window"] == 0
    assert meta["tokenizer.ggml.add_space_prefix"] is True and meta["tokenizer.ggml.add_bos_token"] is False

    q3 = save_tiny(tmp_path / "q3", "qwen3")
    meta, tensors, _ = read(export_gguf(q3, tmp_path / "q3.gguf").path)
    assert tensors["blk.1.attn_k_norm.weight"].shape.tolist() == [128] and meta["qwen3.attention.key_length"] == 128


def test_phi3_longrope_factors_and_mistral_sliding_window_warning(tmp_path):
    from ftstudio.engine.models.gguf_export import export_gguf

    p3 = save_tiny(tmp_path / "p3", "phi3")
    cfg = json.loads((p3 / "config.json").read_text())
    cfg.update(max_position_embeddings=1024, original_max_position_embeddings=256,
               rope_scaling={"rope_type": "longrope", "long_factor": [2.0] * 8, "short_factor": [1.0] * 8})
    cfg.pop("rope_parameters", None)
    (p3 / "config.json").write_text(json.dumps(cfg))
    meta, tensors, _ = read(export_gguf(p3, tmp_path / "p3.gguf").path)
    assert tensors["rope_factors_long.weight"].data.tolist() == [2.0] * 8
    assert meta["phi3.rope.scaling.original_context_length"] == 256
    assert meta["phi3.rope.scaling.attn_factor"] > 1.0

    mi = save_tiny(tmp_path / "mi", "mistral")
    cfg = json.loads((mi / "config.json").read_text())
    (mi / "config.json").write_text(json.dumps({**cfg, "sliding_window": 4096}))
    result = export_gguf(mi, tmp_path / "mi.gguf")
    assert any("sliding window (4096 tokens) is not kept" in w for w in result.warnings)


def llama_cpp_spm(text, tokens, scores, types, add_space_prefix):
    """llama.cpp's sentencepiece tokenizer in plain Python (llama-vocab.cpp, parse_special on): control and
    user-defined tokens are cut out of the text first; each other piece gets " " in front when it starts the
    text or follows such a token (add_space_prefix), spaces become "▁", then repeatedly the adjacent pair whose
    joined text is a token with the highest score is merged (leftmost on ties), and what is not a token is
    written as byte tokens."""
    whole = sorted((t for i, t in enumerate(tokens) if types[i] in (3, 4)), key=len, reverse=True)
    ids = {t: i for i, t in enumerate(tokens) if types[i] in (1, 2, 6)}   # normal, unknown, byte
    special = {t: i for i, t in enumerate(tokens) if types[i] in (3, 4)}
    fragments, rest = [], text
    while rest:
        at = min(((rest.find(t), -len(t), t) for t in whole if t and t in rest), default=None)
        if at is None:
            fragments.append(rest)
            break
        if at[0]:
            fragments.append(rest[:at[0]])
        fragments.append(special[at[2]])
        rest = rest[at[0] + len(at[2]):]
    out, prev_token = [], True
    for frag in fragments:
        if isinstance(frag, int):
            out.append(frag)
            prev_token = True
            continue
        symbols = list((" " + frag if add_space_prefix and prev_token else frag).replace(" ", "\u2581"))
        prev_token = False
        while True:
            best = None
            for i in range(len(symbols) - 1):
                joined = symbols[i] + symbols[i + 1]
                if joined in ids and (best is None or scores[ids[joined]] > scores[ids[best[1]]]):
                    best = (i, joined)
            if best is None:
                break
            symbols[best[0]:best[0] + 2] = [best[1]]
        for sym in symbols:
            out += [ids[sym]] if sym in ids else [ids[f"<0x{b:02X}>"] for b in sym.encode("utf-8")]
    return out


@pytest.mark.parametrize("arch", ["llama-spm", "gemma2"])
def test_scores_make_llama_cpps_tokenizer_give_tokenizer_json_ids(arch, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.engine.models.gguf_export import export_gguf

    model_dir = save_tiny(tmp_path / "m", arch)
    result = export_gguf(model_dir, tmp_path / "m.gguf")
    meta, _, reader = read(result.path)
    f = reader.fields
    tokens = [f["tokenizer.ggml.tokens"].contents()[i] for i in range(len(f["tokenizer.ggml.tokens"].data))]
    scores, types = f["tokenizer.ggml.scores"].contents(), f["tokenizer.ggml.token_type"].contents()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for text in PROBES:  # added tokens too: llama.cpp puts a space after them, as a legacy tokenizer.json does
        assert llama_cpp_spm(text, tokens, scores, types, meta["tokenizer.ggml.add_space_prefix"]) == \
            tok(text, add_special_tokens=False)["input_ids"], text
    # Llama 2's own (legacy) tokenizer.json also loads back through transformers with final/'s logits
    if arch == "llama-spm":
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
        ids = tok("the contract shall terminate")["input_ids"]
        a, b = logits(AutoModelForCausalLM.from_pretrained(model_dir).eval(), ids), logits(loaded, ids)
        assert (a - b).abs().max() <= 1e-2 * a.abs().max()


SMOL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_modelfile_keeps_the_default_system_prompt_and_leaves_what_it_cannot_translate(tmp_path):
    from ftstudio.engine.models.gguf_modelfile import template_turns, write_modelfile

    turns = template_turns(make_bpe_tokenizer(chat_template=SMOL))
    assert turns.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert turns.go_template(False).endswith("{{ end }}{{ end }}<|im_start|>assistant\n")
    msgs = [{"role": "user", "content": "hi"}]
    assert turns.render(msgs) == make_bpe_tokenizer(chat_template=SMOL).apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=True)

    numbered = ("{% for m in messages %}[{{ loop.index }}] {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")
    tok = make_bpe_tokenizer(chat_template=numbered)
    assert template_turns(tok) is None
    model = tmp_path / "m"
    tok.save_pretrained(model)
    path, how = write_modelfile(tmp_path / "x.gguf", model, {"eos_token": "<|im_end|>", "eot_token": "<|im_end|>"})
    text = path.read_text()
    assert how == "left to Ollama" and "TEMPLATE" not in text.replace("tokenizer.chat_template", "")
    assert text.count("PARAMETER stop") == 1 and 'PARAMETER stop "<|im_end|>"' in text


def test_other_architectures_are_still_refused_by_name(tmp_path, capsys):
    model = save_tiny(tmp_path / "m", "gemma3")
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "architectures": ["Gemma3ForConditionalGeneration"]}))
    assert main(["export", str(model), "--gguf", str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert "architecture Gemma3ForConditionalGeneration cannot be exported to GGUF yet" in err and "Phi3" in err
    assert not list(tmp_path.glob("x.*"))
