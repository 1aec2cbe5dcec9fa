"""Sharded runs: the fp16 grad scaler works with the fused AdamW, and low-bit optimizers are swapped, said."""
import subprocess
import sys
import textwrap

from ftstudio.core.config import RunConfig
from ftstudio.engine.distributed.fsdp import sharded_optimizer

SCRIPT = textwrap.dedent("""
    import os, socket, torch, torch.distributed as dist
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    from ftstudio.engine.distributed.fsdp import sharded_grad_scaler
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    for name, make in (("torch", lambda: ShardedGradScaler("cpu")), ("ours", lambda: sharded_grad_scaler("cpu", True))):
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 4)
        opt = torch.optim.AdamW(m.parameters(), fused=True)
        sc = make()
        for step in range(2):
            loss = m(torch.randn(2, 4)).sum()
            if step == 1:
                loss = loss * float("inf")          # an overflow: the step must be skipped, the scale halved
            before = m.weight.detach().clone()
            sc.scale(loss).backward(); sc.unscale_(opt)
            try:
                sc.step(opt); sc.update()
            except RuntimeError as e:
                print(name, "error", str(e)[:80]); break
            opt.zero_grad()
            print(name, step, bool(torch.equal(before, m.weight)), sc.get_scale())
""")


def test_sharded_scaler_steps_the_fused_adamw_and_skips_an_overflow():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert any(l.startswith("torch error") for l in lines), out.stdout + out.stderr   # the defect we work around
    ours = [l.split() for l in lines if l.startswith("ours")]
    assert len(ours) == 2, out.stdout + out.stderr
    assert ours[0][2] == "False"                    # first step: the weights moved
    assert ours[1][2] == "True"                     # overflow: no step
    assert float(ours[1][3]) == float(ours[0][3]) / 2


def test_low_bit_optimizer_is_swapped_for_adamw_under_fsdp_with_a_reason():
    cfg = RunConfig().replace(optimizer="adamw8bit", device="cuda")
    swapped, note = sharded_optimizer(cfg)
    assert swapped.optim.optimizer == "adamw" and "adamw8bit" in note and "sharded" in note
    same, none = sharded_optimizer(RunConfig().replace(optimizer="adamw", device="cuda"))
    assert same.optim.optimizer == "adamw" and none is None
