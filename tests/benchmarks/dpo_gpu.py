"""SFT, then DPO on pairs made here, on one GPU (issue 35's check; nothing of it runs on the CPU tests):

    python tests/benchmarks/make_instructions.py DATA
    python tests/benchmarks/dpo_gpu.py --model SmolLM2-135M-Instruct.Q4_1.gguf --data DATA --out OUT

1. SFT: MODEL fine-tuned on DATA/train.jsonl with the defaults (as chat_stop.py does).
2. Pairs from the same instruction families (``make_instructions.make``): chosen = the careful answer, rejected = a
   wrong one (another row's answer of the same family) or a rude one; train pairs and held-out pairs never share a
   prompt.
3. DPO from the SFT's ``final/``, once per reference option (precompute, model), with memory snapshots every step:
   the held-out preference accuracy at each evaluation (it must rise well above 50 %), the greedy answers to 20
   held-out prompts (they must still end their turn), and the plan's peak (``ftstudio estimate`` of the same config
   on this card, from the same data: train/plan_run.py) against the measured ``torch.cuda.max_memory_allocated``
   (within 3 %).
Writes OUT/dpo_gpu.json and prints it as the last line.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

RUDE = ["Figure it out yourself.", "That is a stupid question.", "I don't care, ask someone else.",
        "Whatever. Look it up."]


def make_pairs(rows: list[dict], seed: int) -> list[dict]:
    """A preference pair per alpaca row: chosen = its answer; rejected = a rude reply or another row's answer
    to a different instruction of the same family (a wrong answer in the right form)."""
    r = random.Random(seed)
    out = []
    for i, row in enumerate(rows):
        user = f"{row['instruction']}\n\n{row['input']}" if row.get("input", "").strip() else row["instruction"]
        others = [x["output"] for x in rows if x["output"] != row["output"] and x["instruction"][:12] ==
                  row["instruction"][:12]]
        wrong = r.choice(others) if others and i % 2 == 0 else r.choice(RUDE)
        out.append({"prompt": [{"role": "user", "content": user}],
                    "chosen": [{"role": "assistant", "content": row["output"]}],
                    "rejected": [{"role": "assistant", "content": wrong}]})
    return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from chat_stop import generate
    from make_instructions import make

    from ftstudio.core.config import RunConfig
    from ftstudio.core.events import EvalMetrics, LogLine, MemorySnapshot, RunFinished
    from ftstudio.engine import run
    from ftstudio.engine.train.plan_run import plan_run
    from ftstudio.engine.models import describe_model

    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=800)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="extra RunConfig leaves for DPO")
    args = p.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)

    sft = run(RunConfig().replace(source=args.model, dataset=str(data / "train.jsonl"), output=str(out / "runs"),
                                  run_name="sft"), lambda e: None)
    if not isinstance(sft, RunFinished):
        raise SystemExit(f"SFT failed: {sft}")
    train_rows = make(args.pairs, seed=11)
    held_rows = make(200, seed=12, exclude={x["instruction"] + "\n" + x["input"] for x in train_rows})
    (out / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in make_pairs(train_rows, 1)) + "\n")
    (out / "heldout_pairs.jsonl").write_text("\n".join(json.dumps(x) for x in make_pairs(held_rows, 2)) + "\n")
    extra = {}
    for item in args.set:
        k, v = item.split("=", 1)
        extra[k] = json.loads(v) if v[:1] in "0123456789-[{tf" else v
    report = {"model": args.model, "sft_steps": sft.steps, "sft_eval": sft.eval, "runs": {}}
    for option in ("precompute", "model"):
        cfg = RunConfig().replace(source=sft.final_model, dataset=str(out / "pairs.jsonl"),
                                  val_dataset=str(out / "heldout_pairs.jsonl"), output=str(out / "runs"),
                                  run_name=f"dpo-{option}", method="dpo", dpo_reference=option, lr=5e-6,
                                  epochs=1, eval_every=10, memory_snapshot_every=1, seq_len=256,
                                  fast_defaults=False, **extra)   # the plan below is of these fields as written
        events = []
        torch.cuda.reset_peak_memory_stats()
        result = run(cfg, events.append)
        if not isinstance(result, RunFinished):
            raise SystemExit(f"DPO ({option}) failed: {result}")
        evals = [(e.step, e.accuracy, e.objective.get("rewards/margins")) for e in events if isinstance(e, EvalMetrics)]
        measured = max((e.allocated_peak or 0) for e in events if isinstance(e, MemorySnapshot))
        info = describe_model(sft.final_model)
        # the plan `ftstudio estimate` makes with the same fields and data (the traced pair step, train/dpo_plan.py)
        planned = plan_run(cfg.replace(device="cuda"), model_config=info.config, device="cuda").plan.peak_allocated
        tuned = AutoModelForCausalLM.from_pretrained(result.final_model, dtype=torch.float32).to("cuda").eval()
        tok = AutoTokenizer.from_pretrained(result.final_model)
        answers = generate(tuned, tok, held_rows[:20])
        report["runs"][option] = {
            "steps": result.steps, "evals": evals, "final_accuracy": result.eval.get("accuracy"),
            "ended_turn": sum(a["ended_turn"] for a in answers), "of": len(answers),
            "peak_measured": measured, "peak_planned": planned,
            "plan_error": (planned - measured) / measured if measured else None,
            "log": [e.message for e in events if isinstance(e, LogLine) and "DPO" in e.message],
            "answers": answers[:5]}
        del tuned
        torch.cuda.empty_cache()
    (out / "dpo_gpu.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
