"""The DPO memory plan against the GPU's allocator, per reference option (issue 35; nothing of it runs in the CPU
tests): random-weight models of public shapes saved in bf16 as hubs save them, a made preference JSONL whose
answers differ in length, then for each option

    ftstudio train MODEL --dataset pairs.jsonl --val-dataset heldout.jsonl --method dpo --dpo-reference OPTION ...
    ftstudio estimate MODEL <the same flags> --json

run in this one process through ``ftstudio.cli.main`` (the CLI's own code, one interpreter start), with the CUDA
peak statistics reset before each run. The measured peak is the largest ``allocated_peak`` of the run's memory
snapshots in metrics.jsonl (one per step; the first covers the reference pass and the step-0 evaluation).

    python tests/benchmarks/dpo_plan_gpu.py --tokenizer TOKENIZER_DIR --out OUT [--shapes smollm2-135m qwen2.5-0.5b] [--flags "..."]
Writes OUT/dpo_plan_gpu.json (or --report) and prints it as the last line.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shlex
import time
from pathlib import Path

SHAPES = {   # the public config.json values of each model (architecture, sizes, vocabulary, tying)
    "smollm2-135m": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "qwen2.5-0.5b": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    "tiny": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                 max_position_embeddings=2048, tie_word_embeddings=True),
}
WORDS = ("the model answers each question with care and names the reason for every step it takes while the "
         "user reads along and checks what was said against the facts of the matter").split()
RUDE = ["Figure it out yourself.", "Whatever.", "That is a stupid question, look it up."]


def build(shape: str, tokenizer_dir: Path, out: Path, device: str) -> Path:
    """A random-weight model of ``shape`` in bf16 with the carried tokenizer, saved as a hub folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    folder = out / shape
    cfg = dict(SHAPES[shape])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir / "tokenizer.json"), bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = (tokenizer_dir / "chat_template.jinja").read_text()
    tok.save_pretrained(folder)
    return folder


def pairs(n: int, seed: int) -> list[dict]:
    """Conversational pairs whose prompts and answers vary in length (so the longest pair, not seq_len, sets the
    length) and whose chosen and rejected answers differ in length (so every batch is padded)."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"Question {i}: " + " ".join(r.choice(WORDS) for _ in range(r.randint(5, 60))) + "?"
        chosen = " ".join(r.choice(WORDS) for _ in range(r.randint(10, 120))) + "."
        rejected = r.choice(RUDE) if i % 2 else " ".join(r.choice(WORDS) for _ in range(r.randint(3, 40))) + "."
        out.append({"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def cli(argv: list[str]) -> tuple[int, str]:
    from ftstudio.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def measure_option(model: Path, data: Path, held: Path, out: Path, option: str, extra: list[str], device: str):
    import torch

    flags = ["--dataset", str(data), "--val-dataset", str(held), "--method", "dpo", "--dpo-reference", option,
             *extra]
    name = f"{model.name}-{option}"
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    code, text = cli(["train", "--model", str(model), *flags, "--output", str(out / "runs"), "--run-name", name,
                      "--memory-snapshot-every", "1", "--no-export", "--quiet", "--json"])
    train_s = time.perf_counter() - t0
    summary = json.loads(text.strip().splitlines()[-1]) if text.strip() else {}
    events = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    snaps = [e for e in events if e.get("event") == "memory"]
    measured = max((e.get("allocated_peak") or 0 for e in snaps), default=0)
    in_run = next((e.get("planned_peak") for e in snaps if e.get("planned_peak")), None)
    evals = [(e["step"], e.get("accuracy"), (e.get("objective") or {}).get("rewards/margins"),
              (e.get("objective") or {}).get("logps/accuracies")) for e in events if e.get("event") == "eval"]
    t0 = time.perf_counter()
    code_e, text_e = cli(["estimate", str(model), *flags, "--json"])
    est = json.loads(text_e.strip().splitlines()[-1])
    planned = est["peak_allocated_bytes"]
    return {"train_exit": code, "train_s": round(train_s, 1), "steps": summary.get("steps"),
            "estimate_exit": code_e, "estimate_s": round(time.perf_counter() - t0, 1),
            "peak_measured": measured, "peak_planned": planned, "peak_phase": est.get("peak_phase"),
            "plan_error": (planned - measured) / measured if measured else None,
            "plan_method": est.get("method"), "plan_margin": est.get("margin"),
            "in_run_plan": in_run, "in_run_error": (in_run - measured) / measured if measured and in_run else None,
            "closed_form_total": est.get("closed_form_bytes"), "choices": est.get("choices"),
            "reference_per_option": est.get("reference"), "evals": evals, "before": (summary.get("eval") or {}).get(
                "before"), "final_eval_accuracy": (summary.get("eval") or {}).get("accuracy"),
            "snapshots": [(e.get("step"), e.get("allocated_peak")) for e in snaps]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer", required=True, help="a folder with tokenizer.json and chat_template.jinja")
    p.add_argument("--out", required=True, help="a work folder (models, runs)")
    p.add_argument("--report", help="where the JSON goes, rewritten after each shape (default OUT/dpo_plan_gpu.json)")
    p.add_argument("--shapes", nargs="*", default=["smollm2-135m", "qwen2.5-0.5b"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=400.0, help="skip the shapes left once this much time passed")
    p.add_argument("--flags", default="--batch-size 8 --seq-len 512 --max-steps 8 --eval-every 4 --lr 5e-6",
                   help="the train flags of every run, as one string")
    args = p.parse_args()
    import torch
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, held = out / "pairs.jsonl", out / "heldout.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in pairs(96, 1)))
    held.write_text("".join(json.dumps(x) + "\n" for x in pairs(32, 2)))
    extra = shlex.split(args.flags) + (["--device", "cpu", "--precision", "fp32"] if args.device == "cpu" else [])
    report = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__, "flags": extra, "shapes": {}}
    target = Path(args.report) if args.report else out / "dpo_plan_gpu.json"
    t_start = time.perf_counter()
    for shape in args.shapes:
        if time.perf_counter() - t_start > args.budget_s:
            report["shapes"][shape] = "skipped: out of time"
            continue
        model = build(shape, Path(args.tokenizer), out / "models", args.device)
        report["shapes"][shape] = {opt: measure_option(model, data, held, out, opt, extra, args.device)
                                   for opt in ("precompute", "model")}
        target.write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    target.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
