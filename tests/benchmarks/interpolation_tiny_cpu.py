"""The CPU check of `ftstudio interpolate --alphas`: a tiny Llama (tests/tiny.py) pre-trained on its own "general"
text, then fine-tuned at a high LR on other text until it forgets; the α sweep then shows retention recovered toward
the base at low α and the task metric toward the fine-tuned value at high α. The same runs as the fixture of
tests/test_interpolate.py.

    python tests/benchmarks/interpolation_tiny_cpu.py OUT_DIR     (about 30 s on 2 CPU cores)
"""
from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from ftstudio.core.config import RunConfig  # noqa: E402
from ftstudio.engine import run  # noqa: E402
from ftstudio.engine.alpha_sweep import sweep_alphas  # noqa: E402
from test_interpolate import GENERAL, TASK  # noqa: E402
from tiny import save_tiny_llama  # noqa: E402


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "runs", ignore_errors=True)
    rng = random.Random(0)
    general, task = out / "general.jsonl", out / "task.jsonl"
    general.write_text("".join(json.dumps({"text": f"{rng.choice(GENERAL)} {rng.choice(GENERAL)}"}) + "\n"
                               for _ in range(60)))
    task.write_text("".join(json.dumps({"text": f"{TASK[i % 4]} {TASK[(i + 1) % 4]}"}) + "\n" for i in range(48)))
    common = dict(output=str(out / "runs"), batch_size=4, seq_len=32, device="cpu", precision="fp32", seed=3)
    pre = run(RunConfig().replace(source=str(save_tiny_llama(out / "tiny")), dataset=str(general), run_name="pre",
                                  max_steps=30, lr=1e-2, val_fraction=0.0, **common))
    run(RunConfig().replace(source=pre.final_model, dataset=str(task), run_name="ft", max_steps=20, lr=3e-2,
                            val_fraction=0.2, eval_every=10, retention_eval=True, retention_data=str(general),
                            **common))
    record = sweep_alphas(out / "runs" / "ft", [i / 10 for i in range(11)])
    lines = ["| α | task eval loss | task gain kept | retention loss | retention loss recovered |", "|---|---|---|---|---|"]
    for p in record["points"]:
        mark = " (chosen)" if p["alpha"] == record["chosen_alpha"] else ""
        lines.append(f"| {p['alpha']:g}{mark} | {p['task']:.4f} | {p['task_gain_kept']:.0%} | {p['retention']:.4f} | "
                     f"{p['retention_recovered']:.0%} |")
    lines += ["", record["rule"]]
    (out / "interpolation_tiny_cpu.md").write_text("\n".join(lines) + "\n")
    if record.get("plot"):
        shutil.copy(record["plot"], out / "interpolation_tiny_cpu.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "interpolation-tiny"))
