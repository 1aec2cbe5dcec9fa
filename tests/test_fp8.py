"""FP8 training (train/fp8.py) on the CPU: when it turns on and why, which layers convert, undoing it, and the
divergence guard (torchao's kernels themselves run only on a GPU: tests/benchmarks/pareto.py measures them)."""
import math
import sys
import types

import pytest
import torch

from ftstudio.core.errors import ConfigError
from ftstudio.core.events import LogLine, StepMetrics
from ftstudio.engine.train import fp8

H100 = dict(device="cuda:0", capability=(9, 0), compiled=True, torchao=True)


def test_auto_turns_on_only_where_it_pays_and_says_why():
    assert fp8.decide("off", params=8e9, **H100) == (None, "")
    assert fp8.decide("auto", params=8e9, **H100)[0] == fp8.AUTO_RECIPE
    assert fp8.decide("auto", params=1.24e9, **H100)[0] == fp8.AUTO_RECIPE          # measured +12.6 % on an H100
    recipe, line = fp8.decide("auto", params=0.5e9, **H100)
    assert recipe is None and "0.50 B parameters" in line and "--fp8 tensorwise forces it" in line
    assert fp8.decide("auto", params=8e9, **dict(H100, compiled=False))[0] is None
    assert "8.0" in fp8.decide("auto", params=8e9, **dict(H100, capability=(8, 0)))[1]     # A100: no FP8 cores
    assert "torchao" in fp8.decide("auto", params=8e9, **dict(H100, torchao=False))[1]
    assert "one GPU" in fp8.decide("auto", params=8e9, gpus=2, **H100)[1]
    assert fp8.decide("rowwise", params=1e8, **H100)[0] == "rowwise"                     # asked for: on
    with pytest.raises(ConfigError, match="memory.fp8: rowwise needs a CUDA GPU"):
        fp8.decide("rowwise", params=8e9, **dict(H100, device="cpu"))


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def test_the_head_and_odd_sizes_stay_in_bf16():
    m = _tiny_lm()
    keep = fp8.module_filter(m)
    assert not keep(m.lm_head, "lm_head")
    assert keep(m.model.layers[0].mlp.up_proj, "model.layers.0.mlp.up_proj")
    assert not keep(torch.nn.Linear(32, 30), "odd")


def test_unconvert_gives_back_plain_linears_over_the_same_parameters(monkeypatch):
    class Float8Linear(torch.nn.Linear):            # stands in for torchao's (an nn.Linear subclass as well)
        pass
    fake = types.ModuleType("torchao.float8.float8_linear")
    fake.Float8Linear = Float8Linear
    for name in ("torchao", "torchao.float8"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "torchao.float8.float8_linear", fake)
    m = _tiny_lm()
    up = m.model.layers[0].mlp.up_proj
    swapped = Float8Linear(32, 64, bias=False)
    swapped.weight = up.weight
    m.model.layers[0].mlp.up_proj = swapped
    keys = set(m.state_dict())
    assert fp8.unconvert(m) == 1
    back = m.model.layers[0].mlp.up_proj
    assert type(back) is torch.nn.Linear and back.weight is up.weight and set(m.state_dict()) == keys


def test_the_guard_tells_the_run_once_when_the_loss_climbs_or_is_not_finite():
    said = []
    guard = fp8.DivergenceGuard(said.append, watch=100)
    step = lambda s, loss: StepMetrics(step=s, loss=loss, lr=1e-5, grad_norm=1.0, tokens_per_s=1.0, epoch=0.0,  # noqa
                                       elapsed_s=1.0, eta_s=1.0, total_steps=200)
    for s, loss in [(1, 2.0), (2, 1.8), (3, 2.9)]:
        guard(step(s, loss))
    assert not any(isinstance(e, LogLine) for e in said)     # 2.9 < 1.5 × 2.0
    guard(step(4, 3.2))
    guard(step(5, float("nan")))
    warnings = [e for e in said if isinstance(e, LogLine)]
    assert len(warnings) == 1 and "FP8 may be diverging" in warnings[0].message and "step 4" in warnings[0].message
    assert len([e for e in said if isinstance(e, StepMetrics)]) == 5           # every event passed on
    late = fp8.DivergenceGuard(said.append, watch=2)
    late(step(1, 2.0))
    late(step(3, 9.0))                                                         # past the watched steps
    assert not late.told
    assert math.isinf(fp8.relative_gap(float("nan"), 2.0)) and fp8.relative_gap(2.02, 2.0) == pytest.approx(0.01)


def test_with_torchao_the_blocks_convert_train_and_convert_back():
    pytest.importorskip("torchao.float8")
    m = _tiny_lm()
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = float(m(input_ids=x, labels=x).loss)
    keys = set(m.state_dict())
    assert fp8.convert(m, "tensorwise") == 2 * 7               # q, k, v, o, gate, up, down per block; not the head
    assert type(m.lm_head) is torch.nn.Linear and set(m.state_dict()) == keys   # checkpoints and export unchanged
    loss = m(input_ids=x, labels=x).loss                      # torchao emulates the FP8 matmul on the CPU
    loss.backward()
    assert fp8.relative_gap(float(loss), ref) < fp8.PROBE_TOLERANCE and m.model.layers[0].mlp.up_proj.weight.grad is not None
    assert fp8.unconvert(m) == 14
    with torch.no_grad():
        assert float(m(input_ids=x, labels=x).loss) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("tolerance,kept", [(fp8.PROBE_TOLERANCE, True), (-1.0, False)])
def test_setup_probes_the_first_batch_against_bf16_and_undoes_fp8_past_the_tolerance(monkeypatch, tolerance, kept):
    pytest.importorskip("torchao.float8")
    from types import SimpleNamespace

    from ftstudio.core.config import RunConfig
    from ftstudio.engine.data.collate import Collator

    monkeypatch.setattr(fp8, "decide", lambda *a, **k: ("tensorwise", "FP8: asked for"))   # the CPU has no FP8 cores
    monkeypatch.setattr(fp8, "PROBE_TOLERANCE", tolerance)
    m = _tiny_lm()
    rows = [{"input_ids": list(range(3, 19)), "labels": list(range(3, 19))} for _ in range(4)]
    prepared = SimpleNamespace(train=rows, task="causal-lm", collate=Collator(0, "causal-lm"))
    said = []
    report = fp8.setup(m, prepared, "cpu", SimpleNamespace(autocast_dtype=None), RunConfig().replace(batch_size=2),
                       said.append, params=10**6)
    text = " ".join(e.message for e in said)
    assert isinstance(report, fp8.DivergenceGuard) is kept
    assert ("FP8: 14 linear layers" in text) is kept and ("FP8 undone" in text) is not kept
    assert (type(m.model.layers[0].mlp.up_proj) is torch.nn.Linear) is not kept


def test_an_fp8_mode_that_cannot_run_is_refused_before_anything_is_written(tmp_path, capsys):
    """--fp8 tensorwise on the CPU: one line naming the field and the fix, before the model loads or the run folder
    is made (it used to fail after loading, leaving a folder with config.yaml and metrics.jsonl)."""
    from ftstudio.cli import main

    code = main(["train", "--demo", "--fp8", "tensorwise", "--device", "cpu", "--max-steps", "2",
                 "--output", str(tmp_path / "runs"), "--run-name", "f"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1] == ("ftstudio: error: memory.fp8: tensorwise needs a CUDA GPU (this run is on cpu); "
                                     "use --fp8 off")
    assert not (tmp_path / "runs" / "f").exists() and "Traceback" not in "\n".join(err)
