"""Does the GGUF export of a fine-tuned chat model still end its turn? Fine-tune SmolLM2-135M-Instruct (from its
GGUF, de-quantised once) for N steps on a small chat set, export final/ as GGUF, load the GGUF back through
transformers and compare greedy answers of final/ and of the GGUF on held-out questions: same text, and does
each end its turn (stop on the end-of-turn / eos ids the GGUF's metadata names, as llama.cpp would)?

    python tests/benchmarks/gguf_stop_check.py --model SmolLM2-135M-Instruct.Q8_0.gguf --steps 60 \
        [--device cuda] [--types f16,q8_0] [--out results.md]

Exit status 0 when, for every type, every answer that ends its turn from final/ also ends it from the GGUF.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ftstudio.core.config import RunConfig  # noqa: E402
from ftstudio.core.events import RunFailed  # noqa: E402

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "sky", "leaf", "banana", "night", "snow", "carrot", "plum"]


def chat_rows(n: int):
    """Short questions with short, formulaic answers: the fine-tune must learn both the answer and the stop."""
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, (i * 7) % 9 + 1
        if i % 2:
            q, ans = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            k = i % len(THINGS)
            q, ans = f"What colour is a typical {THINGS[k]}?", f"A typical {THINGS[k]} is {COLOURS[k]}."
        rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
    return rows


HELD_OUT = ["What is 12 plus 30?", "What colour is a typical apple?", "What is 8 plus 8?",
            "Name a planet.", "Say hello in French.", "What is the capital of Italy?"]


def dequantise(gguf_file: Path, out: Path) -> Path:
    from ftstudio.core.config import ModelConfig
    from ftstudio.engine.models import load_model

    t = time.perf_counter()
    loaded = load_model(ModelConfig(source=str(gguf_file)), task="causal-lm")
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    print(f"de-quantised {gguf_file.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return out


def stop_ids(gguf_file: Path) -> list[int]:
    """What llama.cpp stops on: the file's eos and end-of-turn ids."""
    import gguf

    fields = gguf.GGUFReader(str(gguf_file)).fields
    ids = [fields[k].contents() for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
           if k in fields]
    return list(dict.fromkeys(int(i) for i in ids))


def answer(model, tok, question: str, stops: list[int], device: str, max_new: int) -> tuple[str, bool, int]:
    import torch

    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=stops,
                             pad_token_id=stops[0])
    new = out[0, ids.shape[1]:].tolist()
    ended = bool(new) and new[-1] in stops
    return tok.decode(new, skip_special_tokens=True).strip(), ended, len(new)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct GGUF file or an HF folder")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--types", default="f16,q8_0", help="GGUF tensor types to check")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--out", default=None, help="write the markdown report here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio import engine
    from ftstudio.engine.models.gguf_export import export_gguf

    work = Path(tempfile.mkdtemp(prefix="gguf-stop-"))
    model = Path(args.model)
    if model.suffix == ".gguf":
        model = dequantise(model, work / "base")
    data = work / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(256)), encoding="utf-8")
    cfg = RunConfig().replace(source=str(model), dataset=str(data), task="causal-lm", max_steps=args.steps,
                              batch_size=8, seq_len=128, lr=5e-5, eval_every=0, device=args.device,
                              output=str(work / "runs"), run_name="chat")
    t = time.perf_counter()
    result = engine.run(cfg, lambda e: None)
    if isinstance(result, RunFailed):
        print(f"fine-tune failed: {result.reason} {result.advice}")
        return 2
    final = Path(result.final_model)
    print(f"fine-tuned {args.steps} steps in {time.perf_counter() - t:.0f} s, train loss {result.train_loss:.3f}")

    tok = AutoTokenizer.from_pretrained(final)
    ref = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).to(args.device).eval()
    gen_eos = ref.generation_config.eos_token_id
    ref_stops = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [tok.eos_token_id])
    lines = [f"# GGUF stop check: {args.model}, {args.steps} steps", "",
             f"final/ stops on {ref_stops} ({[tok.decode([i]) for i in ref_stops]}), from its generation config.", ""]
    refs = {q: answer(ref, tok, q, ref_stops, args.device, args.max_new) for q in HELD_OUT}
    ok = True
    for kind in args.types.split(","):
        t = time.perf_counter()
        exported = export_gguf(final.parent, work / f"chat-{kind}.gguf", kind)
        print(exported.summary(), f"in {time.perf_counter() - t:.1f} s", flush=True)
        stops = stop_ids(Path(exported.path))
        loaded = AutoModelForCausalLM.from_pretrained(work, gguf_file=Path(exported.path).name,
                                                      dtype=torch.float32).to(args.device).eval()
        back = AutoTokenizer.from_pretrained(work, gguf_file=Path(exported.path).name)
        lines += [f"## {kind}: {exported.summary()}", "",
                  f"The GGUF stops on {stops} ({[tok.decode([i]) for i in stops]}); its chat template is "
                  f"{'the same as' if back.chat_template == tok.chat_template else 'NOT the same as'} final/'s.", "",
                  "| question | final/ answer | ends turn | GGUF answer | ends turn | same text |",
                  "|---|---|---|---|---|---|"]
        for q in HELD_OUT:
            text, ended, _ = refs[q]
            g_text, g_ended, _ = answer(loaded, tok, q, stops, args.device, args.max_new)
            ok &= g_ended or not ended
            lines.append(f"| {q} | {text!r} | {ended} | {g_text!r} | {g_ended} | {text == g_text} |")
        lines.append("")
        del loaded
    lines.append(f"**{'PASS' if ok else 'FAIL'}**: every answer that ends its turn from final/ "
                 f"{'also ends it' if ok else 'does NOT always end it'} from the GGUF.")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
