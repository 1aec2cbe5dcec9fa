"""Does a chat model fine-tuned with the defaults still end its turn? (issue 15's check, on a GPU)

    python tests/benchmarks/make_instructions.py DATA
    python tests/benchmarks/chat_stop.py --model SmolLM2-135M-Instruct.Q4_1.gguf --data DATA --out OUT

Fine-tunes MODEL on DATA/train.jsonl (alpaca rows) through ``ftstudio.engine.run`` with no option but the
model, the dataset and the output folder, then, on the first 20 rows of DATA/heldout.jsonl (prompts never seen
in training), asks ``final/`` through its own chat template and generation config for a greedy answer of at most
128 new tokens: an answer ends its turn when the first stop token it emits is the template's end-of-turn
token (``<|im_end|>``), not the start of a new turn. Also the held-out
response loss (the assistant tokens and the end-of-turn token, as the trainer renders them) of the untuned
model and of ``final/``. Writes OUT/chat_stop.json and prints it as the last line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _user_turn(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input", "").strip() else row["instruction"]


def end_of_turn_id(tok) -> int | None:
    """The token the chat template writes after an assistant turn (``<|im_end|>`` for SmolLM2)."""
    probe = tok.apply_chat_template([{"role": "user", "content": "Zq"}, {"role": "assistant", "content": "Xj"}],
                                    tokenize=False)
    eot = probe[probe.rfind("Xj") + 2:].strip()
    tid = tok.convert_tokens_to_ids(eot) if eot else None
    return None if tid in (None, tok.unk_token_id) else tid


def stop_ids(tok, gen_cfg) -> set[int]:
    """Where generation halts, the same for every export: the generation config's EOS ids, the tokenizer's EOS
    and the end-of-turn token. Halting is not ending the turn: a model that writes ``<|im_start|>user`` after
    its answer (inventing the next question) halts on an EOS id but never ended its turn."""
    ids = set(gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id])
    ids |= {tok.eos_token_id, end_of_turn_id(tok)}
    return {i for i in ids if i is not None}


def generate(model, tok, rows, max_new: int = 128) -> list[dict]:
    import torch

    gen_cfg = model.generation_config
    stops, eot = stop_ids(tok, gen_cfg), end_of_turn_id(tok)
    out = []
    for row in rows:
        ids = tok.apply_chat_template([{"role": "user", "content": _user_turn(row)}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        ids = {k: v.to(model.device) for k, v in ids.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            seq = model.generate(**ids, max_new_tokens=max_new, do_sample=False, generation_config=gen_cfg)
        new = seq[0, ids["input_ids"].shape[1]:].tolist()
        first = next((t for t in new if t in stops), None)
        ended = first is not None and first == eot       # the answer's first stop is the end-of-turn token
        out.append({"prompt": _user_turn(row), "answer": tok.decode(new, skip_special_tokens=False),
                    "ended_turn": ended, "new_tokens": len(new), "expected": row["output"]})
    return out


def response_loss(model, tok, heldout: Path, cfg) -> float:
    from ftstudio.engine.data import prepare_data
    try:
        from ftstudio.engine.train.evaluate import evaluate
    except ImportError:  # before the engine's rooms
        from ftstudio.engine.evaluate import evaluate

    kw = {"instruction_format": cfg.data.instruction_format} if hasattr(cfg.data, "instruction_format") else {}
    data_cfg = cfg.data.__class__(dataset=str(heldout), val_dataset=str(heldout), seq_len=cfg.data.seq_len, **kw)
    prepared = prepare_data(data_cfg, tok, task="causal-lm", seed=0)
    return evaluate(model, prepared, device=str(model.device), task="causal-lm",
                    autocast_dtype=None, batch_size=16)["loss"]


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.core.config import RunConfig
    from ftstudio.core.events import LogLine, RunFinished, StepMetrics
    try:
        from ftstudio.engine import run
    except ImportError:  # a checkout from before engine.run (to measure the old behaviour)
        from ftstudio.engine.trainer import train as run
    from ftstudio.engine.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="extra RunConfig leaves")
    args = p.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    heldout_rows = [json.loads(x) for x in (data / "heldout.jsonl").read_text().splitlines()][: args.n]
    extra = {}
    for item in args.set:
        k, v = item.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" and v not in ("text",) else v
    cfg = RunConfig().replace(source=args.model, dataset=str(data / "train.jsonl"), output=str(out / "runs"),
                              run_name="defaults", **extra)
    t0 = time.perf_counter()
    events = []
    result = run(cfg, events.append)
    if not isinstance(result, RunFinished):
        raise SystemExit(f"training failed: {result}")
    steps = [e for e in events if isinstance(e, StepMetrics)]
    print(f"trained {result.steps} steps in {time.perf_counter() - t0:.0f} s; last loss {steps[-1].loss:.4f}",
          flush=True)
    for e in events:
        if isinstance(e, LogLine) and e.level != "info":
            print("log:", e.message)
    final = Path(result.final_model)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tuned = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).to(dev).eval()
    tok = AutoTokenizer.from_pretrained(final)
    base = load_model(cfg.model, task="causal-lm").model.to(dev).eval()
    base.generation_config = tuned.generation_config  # the same stop tokens for both
    answers = generate(tuned, tok, heldout_rows)
    base_answers = generate(base, tok, heldout_rows)
    losses = {"base": response_loss(base, tok, data / "heldout.jsonl", cfg),
              "tuned": response_loss(tuned, tok, data / "heldout.jsonl", cfg)}
    report = {"model": args.model, "steps": result.steps, "train_loss": result.train_loss,
              "eval": result.eval, "ended_turn": sum(a["ended_turn"] for a in answers), "of": len(answers),
              "base_ended_turn": sum(a["ended_turn"] for a in base_answers),
              "heldout_response_loss": losses,
              "loss_drop": 1 - losses["tuned"] / losses["base"],
              "generation_eos": tuned.generation_config.eos_token_id, "stop_ids": sorted(stop_ids(tok, tuned.generation_config)),
              "config": extra,
              "answers": answers[:20], "base_answers": base_answers[:5]}
    (out / "chat_stop.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in report.items() if k not in ("answers", "base_answers")}))


if __name__ == "__main__":
    main()
