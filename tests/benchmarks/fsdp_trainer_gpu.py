"""The real multi-GPU path on GPUs: engine.trainer.train() with two GPUs ticked (torchrun subprocess, NCCL,
FSDP2, bf16-mixed, DCP checkpoint, stop + resume, save_pretrained export) against one GPU accumulating the
same global batch. A small random Llama and a generated JSONL (no `datasets` needed). Prints one JSON line.

    python tests/benchmarks/fsdp_trainer_gpu.py OUT_DIR
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_trainer import lm_config, write_text_data  # noqa: E402
from tiny import save_tiny_llama  # noqa: E402

from ftstudio.core.control import Control  # noqa: E402
from ftstudio.core.events import MemorySnapshot, StepMetrics  # noqa: E402
from ftstudio.engine import run as train  # noqa: E402
from ftstudio.engine.train import Trainer  # noqa: E402


def main(out: Path) -> dict:
    model = save_tiny_llama(out / "model", layers=4, hidden=256)
    cfg = lm_config(model, write_text_data(out / "d.jsonl", n=400), out / "runs", max_steps=12, eval_every=6,
                    device="auto", precision="bf16-mixed", batch_size=8, memory_snapshot_every=4, lr=1e-3)
    single_ev = []
    t = time.time()
    single = Trainer(cfg.replace(grad_accum=2, run_name="single"), single_ev.append).run()
    t_single = time.time() - t
    ev, control = [], Control()

    def stop_at_5(e):
        ev.append(e)
        if isinstance(e, StepMetrics) and e.step == 5:
            control.request_stop()

    d = cfg.replace(gpus=[0, 1], run_name="dist")
    t = time.time()
    first = train(d, stop_at_5, control)
    second = train(d, ev.append, resume_from=str(out / "runs" / "dist"))
    t_dist = time.time() - t
    s_loss = {e.step: e.loss for e in single_ev if isinstance(e, StepMetrics)}
    d_loss = {e.step: e.loss for e in ev if isinstance(e, StepMetrics)}
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out / "runs" / "dist" / "final")
    return dict(single=type(single).__name__, first=first.to_dict(), second=second.to_dict(),
                steps=sorted(d_loss), max_loss_diff=max(abs(d_loss[k] - s_loss[k]) for k in s_loss if k in d_loss),
                single_loss=[round(s_loss[k], 4) for k in sorted(s_loss)],
                dist_loss=[round(d_loss[k], 4) for k in sorted(d_loss)],
                memory_devices=sorted({e.device for e in ev if isinstance(e, MemorySnapshot)}),
                export_loads=True, wall_single_s=round(t_single, 1), wall_dist_s=round(t_dist, 1))


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
