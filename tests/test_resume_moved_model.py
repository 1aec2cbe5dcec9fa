"""A stopped run whose base model folder was moved or deleted: --resume said only "/path: no such file or folder"
after reading the data, naming neither where the path came from (the run's config.yaml) nor how to go on."""
from __future__ import annotations

import shutil

from ftstudio.core.control import Control
from ftstudio.core.events import StepMetrics
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, write_text_data


def test_resume_names_the_moved_base_model_and_the_way_on(tiny_llama, tmp_path, cli):
    model = shutil.copytree(tiny_llama, tmp_path / "base")
    data = write_text_data(tmp_path / "d.jsonl", n=24)
    cfg = lm_config(model, data, tmp_path / "runs", max_steps=6, eval_every=0, checkpoint_every=2)
    control = Control()
    result = Trainer(cfg, lambda e: isinstance(e, StepMetrics) and e.step == 2 and control.request_stop(),
                     control).run()
    assert result.status == "stopped"
    run_dir = tmp_path / "runs" / "r"
    model.rename(tmp_path / "moved")
    code, out, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 2 and "Traceback" not in err
    assert f"{model}, the base model {run_dir / 'config.yaml'} names, is gone" in err
    assert f"--resume {run_dir} --model NEW_PATH --allow-config-change" in err
    code, _, err = cli("train", "--resume", run_dir, "--model", tmp_path / "moved", "--allow-config-change",
                       "--quiet")
    assert code == 0, err


def test_resume_refuses_a_max_steps_below_the_step_reached(tiny_llama, tmp_path, cli):
    """--allow-config-change --max-steps 2 on a run stopped at step 4 'finished after 4 steps' at once, marking
    the run finished with no word that nothing trained."""
    data = write_text_data(tmp_path / "d.jsonl", n=24)
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=8, eval_every=0, checkpoint_every=2)
    control = Control()
    Trainer(cfg, lambda e: isinstance(e, StepMetrics) and e.step == 4 and control.request_stop(), control).run()
    run_dir = tmp_path / "runs" / "r"
    code, _, err = cli("train", "--resume", run_dir, "--max-steps", "2", "--allow-config-change", "--quiet")
    assert code == 2 and "train.max_steps: 2 is below step 4" in err and "give --max-steps above 4" in err
    from ftstudio.core.runs import read_metrics
    assert not [e for e in read_metrics(run_dir) if e.get("status") == "finished"]   # still resumable
