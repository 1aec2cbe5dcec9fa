"""A run trained to its end with the export off (--no-export) has no final/. `ftstudio export RUN` answered
"stopped before its end; continue it with: ftstudio train --resume RUN", and that resume answered "finished; start
a new run from --model RUN/final", a folder that does not exist: each pointed at the other. Now `ftstudio export
RUN` writes final/ from the end checkpoint (no step trains again), and a resume's refusal says what there is."""
from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file

from ftstudio.core.events import RunFinished
from ftstudio.engine.train import Trainer
from test_trainer import lm_config, write_text_data


def _train(cfg):
    result = Trainer(cfg, lambda e: None).run()
    assert isinstance(result, RunFinished), result
    return Path(result.output_dir)


def test_export_writes_final_of_a_run_finished_without_it(tiny_llama, tmp_path, cli):
    data = write_text_data(tmp_path / "d.jsonl", n=24)
    cfg = lm_config(tiny_llama, data, tmp_path / "runs", max_steps=4, eval_every=0, checkpoint_every=2)
    straight = _train(cfg.replace(run_name="straight"))
    run_dir = _train(cfg.replace(export=False))
    assert not (run_dir / "final").exists()
    shutil.copytree(run_dir, tmp_path / "copy")

    code, _, err = cli("train", "--resume", tmp_path / "copy", "--quiet")
    assert code == 2 and f"write it with: ftstudio export {tmp_path / 'copy'}" in err and "--model" not in err

    code, out, err = cli("export", run_dir)
    assert code == 0, err
    assert "finished with the export off" in out
    got = load_file(str(run_dir / "final" / "model.safetensors"))
    want = load_file(str(straight / "final" / "model.safetensors"))
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in got)   # the end weights, no more steps
    code, out, _ = cli("export", run_dir)
    assert code == 0 and "is complete; nothing to do" in out


def test_a_finished_run_that_kept_no_weights_says_so(tiny_llama, tmp_path, cli):
    data = write_text_data(tmp_path / "d.jsonl", n=24)
    run_dir = _train(lm_config(tiny_llama, data, tmp_path / "runs", max_steps=2, eval_every=0, export=False))
    code, _, err = cli("train", "--resume", run_dir, "--quiet")
    assert code == 2 and "kept no weights" in err and "--model" not in err
