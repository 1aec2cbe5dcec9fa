"""Hostile and bounded inputs (issue 28): a YAML alias bomb and an oversized config, a named pipe or a device given
as data, a config path that would inject commands into a launch script, numbers that overflow, a chat template
that never ends; and the lines `train --quiet` must still print because they change what is trained.

Each is one clear line (no traceback, no hang) or, for the notices, a line under --quiet. In this process
through ftstudio's main() (a subprocess costs seconds of imports per call)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path

import pytest

from test_trainer import write_text_data

pytestmark = pytest.mark.timeout(120)




def _one_error_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [x for x in lines if "error" in x.lower()]
    assert len(errors) == 1, err
    return errors[0]


def _bomb(levels: int = 9) -> str:
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        parts.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "model:\n  source: [" + ", ".join(parts) + "]\n"


# -- configs -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["train", "launch-script"])
def test_a_yaml_alias_bomb_is_refused_at_once(verb, cli, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    assert len(path.read_text()) < 1024   # 1 KB that expands to 9^9 strings
    t0 = time.monotonic()
    code, _, err = cli(verb, path)
    assert code == 2 and time.monotonic() - t0 < 5
    assert "expands to more than 100,000 values" in _one_error_line(err) and "bomb.yaml" in err


def test_a_run_folder_holding_an_alias_bomb_is_listed_without_hanging(tmp_path):
    from ftstudio.core.runs import summarize_run
    run = tmp_path / "hostile-run"
    run.mkdir()
    (run / "config.yaml").write_text(_bomb())
    t0 = time.monotonic()
    summary = summarize_run(run)
    assert time.monotonic() - t0 < 5 and summary is not None and summary.model == ""


def test_an_oversized_config_is_refused_by_size(cli, tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  run_name: " + "x" * 1_100_000 + "\n")
    code, _, err = cli("train", path)
    assert code == 2 and "a run config is a few KB" in _one_error_line(err)


def test_the_anchors_a_config_may_use_still_load(tmp_path):
    from ftstudio.core.config import RunConfig
    cfg = RunConfig.from_yaml("optim: &o {lr: 1.0e-5}\nschedule: {warmup_ratio: 0.1}\n")
    assert cfg.optim.lr == 1e-5


# -- data that is not a file ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("verb", ["check-data", "train"])
def test_a_pipe_or_a_device_as_data_is_refused_by_name(kind, verb, cli, tiny_llama, tmp_path):
    if kind == "fifo":
        path = tmp_path / "rows.jsonl"
        os.mkfifo(path)   # reading it would wait forever for a writer
        said = "a named pipe (FIFO)"
    else:
        path, said = Path("/dev/zero"), "a character device"   # reading it would never end
    args = (["--model", tiny_llama] if verb == "check-data" else
            ["--model", tiny_llama, "--output", tmp_path / "runs", "--device", "cpu", "--max-steps", "1"])
    code, out, err = cli(verb, path if verb == "check-data" else "--dataset",
                         *([] if verb == "check-data" else [path]), *args)
    err = out + err   # check-data reports on stdout
    assert code in (1, 2), err
    assert f"{path}: this is {said}, not a regular file" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# -- paths written into a script ----------------------------------------------------------------------------------
def test_a_config_path_with_a_newline_cannot_inject_a_command(cli, tmp_path):
    folder = tmp_path / "x\ntouch pwned\n"
    folder.mkdir()
    (folder / "c.yaml").write_text("train: {max_steps: 3}\n")
    code, out, err = cli("launch-script", folder / "c.yaml")
    assert code == 2 and out == ""
    assert "holds a control character ('\\n')" in _one_error_line(err)


def test_every_path_in_a_launch_script_is_quoted(cli, tmp_path):
    path = tmp_path / "a b $(touch pwned) `x` 'q'.yaml"
    path.write_text("train: {max_steps: 3}\n")
    code, out, _ = cli("launch-script", path, "--slurm")
    assert code == 0
    for line in out.splitlines():
        if "ftstudio.engine.distributed" in line:
            assert shlex.split(line)[-1] == str(path.resolve()), line   # one word, nothing expanded
        if line.startswith("#") and "fine-tune of" in line:
            assert "\n" not in line and shlex.quote(str(path.resolve())) in line


# -- numbers --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["estimate", "MODEL", "--gpu-memory", "1e308"], "--gpu-memory: 1e+308 is beyond any real gpu memory"),
    (["estimate", "--params", "1e300", "--hidden", "8", "--layers", "2"], "--params: 1e+300 is beyond any real"),
    (["estimate", "MODEL", "--batch-size", "99999999999999999999"], "--batch-size: 1e+20 is beyond any real"),
    (["train", "--demo", "--lr", "nan"], "is not a finite number"),
    (["train", "--demo", "--max-steps", "99999999999999999999"], "at most 1e+12"),
])
def test_numeric_flags_are_bounded(argv, needle, tiny_llama, capsys):
    from ftstudio.cli import main
    argv = [str(tiny_llama) if a == "MODEL" else a for a in argv]
    try:
        code = main(argv)              # refused by the verb
    except SystemExit as e:            # refused by argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


# -- a chat template that never ends -----------------------------------------------------------------------------
def test_a_runaway_chat_template_is_one_error_within_its_time_limit(cli, tiny_llama, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    model = tmp_path / "looping"
    shutil.copytree(tiny_llama, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for a in range(100000) %}{% for b in range(100000) %}{% for m in messages %}"
                         "{{ m['content'] }}{% endfor %}{% endfor %}{% endfor %}")
    tok.save_pretrained(model)
    data = tmp_path / "chat.jsonl"
    with open(data, "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                              {"role": "assistant", "content": "yes"}]}) + "\n")
    monkeypatch.setenv("FTSTUDIO_TEMPLATE_TIME_LIMIT", "1")
    t0 = time.monotonic()
    code, out, err = cli("check-data", data, "--model", model)
    err = out + err
    assert code == 1 and time.monotonic() - t0 < 30, "one row's limit, not twenty"
    assert "took longer than 1 s to render this row" in err and "Traceback" not in err


# -- what train says under --quiet ---------------------------------------------------------------------------------
def _pc_data(path: Path) -> Path:
    with open(path, "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"prompt": f"the party {i}", "completion": " shall pay"}) + "\n")
    return path


def _chat_data(path: Path) -> Path:
    with open(path, "w") as fh:
        for i in range(12):
            fh.write(json.dumps({"messages": [{"role": "user", "content": f"hello {i}"},
                                              {"role": "assistant", "content": "good answer"}]}) + "\n")
    return path


def _train_quiet(cli, model, data, tmp_path):
    code, _, err = cli("train", "--model", model, "--dataset", data, "--output", tmp_path / "runs", "--device", "cpu",
                       "--precision", "fp32", "--max-steps", "1", "--batch-size", "2", "--seq-len", "32",
                       "--eval-every", "0", "--quiet")
    assert code == 0, err
    return " ".join(err.split())


def test_quiet_train_still_says_the_tokenizer_has_no_eos(cli, tiny_llama, tmp_path):
    from transformers import AutoTokenizer
    model = tmp_path / "no-eos"
    shutil.copytree(tiny_llama, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.eos_token = None
    tok.save_pretrained(model)
    said = _train_quiet(cli, model, _pc_data(tmp_path / "pc.jsonl"), tmp_path)
    assert "The tokenizer has no end-of-sequence token" in said


def test_quiet_train_still_says_the_fallback_template(cli, tiny_llama_no_template, tmp_path):
    said = _train_quiet(cli, tiny_llama_no_template, _chat_data(tmp_path / "chat.jsonl"), tmp_path)
    assert "The tokenizer has no chat template: rows are rendered with FT Studio's fallback template" in said


def test_quiet_train_still_says_remote_code_is_not_run(cli, tiny_llama, tmp_path):
    model = tmp_path / "auto-map"
    shutil.copytree(tiny_llama, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (model / "config.json").write_text(json.dumps(cfg))
    said = _train_quiet(cli, model, write_text_data(tmp_path / "d.jsonl", n=12), tmp_path)
    assert "ships its own model code (auto_map in config.json), which is not run" in said


def test_quiet_train_still_says_the_embedding_grew_and_what_started_random(cli, tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer
    model = tmp_path / "grown"
    shutil.copytree(tiny_llama, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.add_tokens(["brandnewword"])
    tok.save_pretrained(model)
    weights = load_file(str(model / "model.safetensors"))
    del weights["model.norm.weight"]   # a tensor the checkpoint lacks
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    said = _train_quiet(cli, model, write_text_data(tmp_path / "d.jsonl", n=12), tmp_path)
    assert f"The embedding grew from {len(tok) - 1} to {len(tok)} rows" in said and "'brandnewword'" in said
    assert "not in the checkpoint, initialised at random: model.norm.weight" in said
