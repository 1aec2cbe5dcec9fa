"""The Optuna sweep on a tiny model: real short runs in their own folders, pruning, the table, the plot and a
best.yaml that `ftstudio train` reads."""
import json

import pytest

pytest.importorskip("optuna")

from ftstudio.core.config import RunConfig
from ftstudio.core.control import Control
from ftstudio.core.errors import ConfigError
from ftstudio.engine.sweep import SweepSpec, sweep, trial_eval_every


def _cfg(tiny_llama, tmp_path, **kw):
    from test_trainer import write_text_data
    base = dict(source=str(tiny_llama), dataset=str(write_text_data(tmp_path / "d.jsonl")),
                output=str(tmp_path / "runs"), batch_size=4, seq_len=32, val_fraction=0.25, device="cpu",
                precision="fp32", epochs=3.0)
    base.update(kw)
    return RunConfig().replace(**base)


def test_sweep_runs_trials_prunes_and_writes_best_yaml(tiny_llama, tmp_path):
    cfg = _cfg(tiny_llama, tmp_path)
    seen = []
    # Wide LR range on a tiny LM: some trials barely move and fall behind the median, which prunes them.
    result = sweep(cfg, SweepSpec(lr_low=1e-6, lr_high=3e-2, trials=5, max_steps=8), on_trial=seen.append)
    states = [t["state"] for t in result.trials]
    assert len(result.trials) == 5 and set(states) <= {"complete", "pruned"}
    assert "pruned" in states, result.trials
    assert any(s["state"] == "running" for s in seen)            # listed live, before each trial ended
    for t in result.trials:
        assert 1e-6 <= t["lr"] <= 3e-2
        run_dir = tmp_path / "runs" / t["run_dir"].split("/")[-1]
        lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert RunConfig.load(run_dir / "config.yaml").optim.lr == pytest.approx(t["lr"])
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "final").exists()
        evals = [e for e in lines if e["event"] == "eval"]
        if t["state"] == "pruned":  # ended at the evaluation that pruned it, before its last step
            assert t["step"] < 8 and evals[-1]["step"] == t["step"]
        else:
            assert lines[-1]["event"] == "finished" and lines[-1]["steps"] == 8
            assert t["value"] == pytest.approx(lines[-1]["eval"]["loss"])
    done = [t for t in result.trials if t["state"] == "complete"]
    assert result.best == min(done, key=lambda t: t["value"])
    best = RunConfig.load(result.best_config)
    assert best.optim.lr == pytest.approx(result.best["lr"]) and best.train.max_steps is None  # the user's length
    assert best.train.run_name is None
    table = open(result.table).read()
    assert "PRUNED" in table and "(best)" in table and table.count("\n") == 2 + 5
    assert open(result.plot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_options_stop_and_bad_input(tiny_llama, tmp_path):
    from ftstudio.core.events import StepMetrics

    control = Control()

    def reporter(event):
        if isinstance(event, StepMetrics) and event.step == 2:
            control.request_stop()

    cfg = _cfg(tiny_llama, tmp_path)
    result = sweep(cfg, SweepSpec(trials=4, max_steps=6, batch_sizes=[2, 4], warmup=(0.0, 0.2)), reporter, control)
    assert result.status == "stopped" and [t["state"] for t in result.trials] == ["stopped"]
    assert result.trials[0]["batch_size"] in (2, 4) and 0 <= result.trials[0]["warmup_ratio"] <= 0.2
    assert result.best is None and result.best_config is None
    assert trial_eval_every(cfg, 40) == cfg.eval.eval_every == 20 and trial_eval_every(cfg, 8) == 2
    with pytest.raises(ConfigError, match="LOW:HIGH"):
        SweepSpec(lr_low=1e-3, lr_high=1e-5).check()


def test_cli_json(tiny_llama, tmp_path, capsys):
    from ftstudio.cli import main
    from test_trainer import write_text_data

    code = main(["sweep", "--model", str(tiny_llama), "--dataset", str(write_text_data(tmp_path / "d.jsonl")),
                 "--output", str(tmp_path / "r"), "--batch-size", "4", "--seq-len", "32", "--val-fraction", "0.25",
                 "--device", "cpu", "--lr", "1e-4:1e-2", "--trials", "2", "--max-steps", "4", "--json", "--quiet"])
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert code == 0 and len(summary["trials"]) == 2 and 1e-4 <= summary["best_lr"] <= 1e-2
    assert RunConfig.load(summary["best_config"]).optim.lr == pytest.approx(summary["best_lr"])
    with pytest.raises(SystemExit) as bad:
        main(["sweep", "--demo", "--lr", "1e-4"])
    err = capsys.readouterr().err
    assert bad.value.code == 2 and "LOW:HIGH" in err and len(err.strip().splitlines()) == 1
