"""The CLI end to end, as a user runs it: train (YAML + flags, --json), check-data, estimate, gpus."""
import json
import subprocess
import sys

import pytest

from ftstudio.cli import main
from ftstudio.core.config import RunConfig
from test_trainer import write_class_data, write_text_data


def last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_train_json_summary_and_exported_model(tiny_llama, tmp_path, capsys):
    data = write_text_data(tmp_path / "d.jsonl")
    cfg = tmp_path / "run.yaml"
    RunConfig().replace(source=str(tiny_llama), dataset=str(data), max_steps=50, lr=1e-3).save(cfg)
    # flags override the YAML
    code = main(["train", str(cfg), "--max-steps", "4", "--batch-size", "4", "--seq-len", "32", "--device", "cpu",
                 "--output", str(tmp_path / "runs"), "--run-name", "cli", "--eval-every", "2", "--json", "--quiet"])
    assert code == 0
    summary = last_json(capsys)
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert summary["eval"]["perplexity"] > 1 and summary["train_loss"] > 0
    assert summary["output_dir"].endswith("cli") and summary["final_model"].endswith("final")
    saved = RunConfig.load(tmp_path / "runs" / "cli" / "config.yaml")
    assert saved.train.max_steps == 4 and saved.optim.lr == 1e-3  # the YAML's value, the flag's override
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(summary["final_model"])


def test_classifier_export_carries_label_names(tiny_bert, tmp_path, capsys):
    data = write_class_data(tmp_path / "c.jsonl")
    code = main(["train", "--model", str(tiny_bert), "--dataset", str(data), "--max-steps", "3", "--batch-size", "8",
                 "--device", "cpu", "--output", str(tmp_path / "runs"), "--json", "--quiet"])
    assert code == 0
    summary = last_json(capsys)
    assert 0 <= summary["eval"]["accuracy"] <= 1 and "macro_f1" in summary["eval"]
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(summary["final_model"])
    assert sorted(model.config.id2label.values()) == ["confidentiality", "liability", "termination"]


def test_check_data_json_keys(tiny_llama, tmp_path, capsys):
    p = tmp_path / "chat.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                          {"role": "assistant", "content": "yes good"}]}) + "\n", encoding="utf-8")
    assert main(["check-data", str(p), "--model", str(tiny_llama), "--json", "--val-fraction", "0"]) == 0
    report = last_json(capsys)
    for key in ("format", "rows", "train_rows", "val_rows", "tokens", "trainable_tokens", "errors"):
        assert key in report
    assert report["format"] == "chat" and report["rows"] == 1 and report["errors"] == []
    assert 0 < report["trainable_tokens"] < report["tokens"]  # only the assistant's turn is under the loss


def test_estimate_json_without_torch(tmp_path):
    code = ("import json, sys; from ftstudio.cli import main; main(['estimate', '--params', '7e9', '--hidden', "
            "'4096', '--layers', '32', '--json']); print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    report, torch_loaded = json.loads(lines[-2]), json.loads(lines[-1])
    assert torch_loaded is False
    assert report["params"] == 7e9 and report["textbook_bytes"] > 112e9
    assert set(report["breakdown"]) >= {"weights", "gradients", "optimizer", "activations", "other"}
    assert report["peak_bytes"] > report["textbook_bytes"] * 0.9 and "max_batch_size" in report


def test_estimate_takes_a_preset_and_the_step_in_backward(capsys):
    """--preset largest plans bf16 + 8-bit states + the step in backward; flags after it override it."""
    shape = ["--params", "14e9", "--hidden", "5120", "--layers", "48", "--seq-len", "4096", "--json"]
    assert main(["estimate", *shape]) == 0
    plain = last_json(capsys)
    assert main(["estimate", *shape, "--preset", "largest"]) == 0
    largest = last_json(capsys)
    assert (largest["precision"], largest["optimizer"]) == ("bf16", "adamw8bit")
    assert largest["breakdown"]["gradients"] < plain["breakdown"]["gradients"] / 20   # one tensor, not 14B
    assert largest["peak_allocated_bytes"] < plain["peak_allocated_bytes"] / 3
    assert main(["estimate", *shape, "--preset", "largest", "--optimizer", "adamw4bit"]) == 0
    four = last_json(capsys)
    assert four["optimizer"] == "adamw4bit" and four["breakdown"]["optimizer"] < largest["breakdown"]["optimizer"]
    assert main(["estimate", *shape, "--optimizer-in-backward"]) == 0
    assert last_json(capsys)["breakdown"]["gradients"] < plain["breakdown"]["gradients"] / 20
    assert main(["estimate", *shape, "--preset", "largest", "--no-optimizer-in-backward"]) == 0   # as train takes it
    assert last_json(capsys)["breakdown"]["gradients"] > largest["breakdown"]["gradients"] * 20


def test_estimate_checks_flags_that_need_each_other_together(capsys):
    """--checkpoint-blocks needs --activation-checkpointing: given together they plan (train takes them so), the
    first alone is one clear line; fewer checkpointed blocks plan more activations."""
    shape = ["--params", "1.2e9", "--hidden", "2048", "--layers", "16", "--seq-len", "2048", "--json"]
    assert main(["estimate", *shape, "--activation-checkpointing"]) == 0
    every = last_json(capsys)
    assert main(["estimate", *shape, "--activation-checkpointing", "--checkpoint-blocks", "4"]) == 0
    four = last_json(capsys)
    assert four["peak_allocated_bytes"] > every["peak_allocated_bytes"]
    assert main(["estimate", *shape, "--checkpoint-blocks", "4"]) == 2
    assert "memory.checkpoint_blocks: needs memory.activation_checkpointing on" in capsys.readouterr().err


def test_estimate_takes_demo_as_train_does(capsys):
    """`estimate --demo` plans `train --demo`: the bundled model, and its data read for the real row lengths."""
    assert main(["estimate", "--demo", "--json"]) == 0
    demo = last_json(capsys)
    assert main(["estimate", "demo", "--dataset", "demo", "--json"]) == 0
    named = last_json(capsys)
    assert demo["peak_allocated_bytes"] == named["peak_allocated_bytes"] > 0
    assert any(line.startswith("Data: ") for line in demo["choices"])


def test_estimate_takes_gpus_as_a_count_or_as_trains_list(capsys, tmp_path):
    shape = ["--params", "7e9", "--hidden", "4096", "--layers", "32", "--json"]
    peaks = {}
    for gpus in ("2", "0,1", "[0, 1]", "1"):
        assert main(["estimate", *shape, "--gpus", gpus]) == 0
        peaks[gpus] = last_json(capsys)
    assert peaks["2"]["gpus"] == peaks["0,1"]["gpus"] == peaks["[0, 1]"]["gpus"] == 2
    assert peaks["0,1"]["peak_allocated_bytes"] == peaks["2"]["peak_allocated_bytes"] < peaks["1"]["peak_allocated_bytes"]
    for bad, said in (("0", "0 must be positive"), ("-1", "-1 must be positive"), ("a,b", "invalid int value"),
                      ("0,0", "must be distinct"), ("", "must be distinct")):
        with pytest.raises(SystemExit):
            main(["estimate", *shape, "--gpus", bad])
        assert said in capsys.readouterr().err
    (tmp_path / "run.yaml").write_text("hardware:\n  gpus: [0, 1, 2, 3]\n")
    assert main(["estimate", *shape, "--config", str(tmp_path / "run.yaml")]) == 0
    assert last_json(capsys)["gpus"] == 4                          # the config file's list, as train reads it


def test_gpus_json(capsys):
    assert main(["gpus", "--json"]) == 0
    report = last_json(capsys)
    assert isinstance(report["gpus"], list) and report["cpu"]["logical_cores"] >= 1
    if not report["gpus"]:
        assert report["message"] == "no NVIDIA GPU"


def test_invalid_value_names_the_field_and_exits_2(capsys):
    assert main(["train", "--lr", "-1"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def test_unknown_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--schedule", "step"])
    assert info.value.code == 2 and "cosine" in capsys.readouterr().err


def test_train_lists_broken_lines_and_bad_fields_at_once(tiny_llama, tmp_path, capsys):
    bad = tmp_path / "mixed.jsonl"
    bad.write_text('{"text": "fine row"}\n{"text": \n{"text": 7}\n{"text": "another fine row"}\n', encoding="utf-8")
    code = main(["train", "--model", str(tiny_llama), "--dataset", str(bad), "--device", "cpu",
                 "--output", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "row 2" in err and "row 3" in err and "'text'" in err  # the JSON error and the wrong type together
    assert not (tmp_path / "runs").exists()


# HF Trainer's process imports these (datasets → pandas, pyarrow) or may (the trackers, the sweep, plots):
# ~0.4 s of a 30 s CPU demo run (tests/benchmarks/cpu_demo_vs_hf.py). A train run without a tracker, sweep or
# plot must not pay for them: each is imported only where it is used.
NOT_IN_A_TRAIN_RUN = ("datasets", "pandas", "pyarrow", "matplotlib", "tensorboard", "torch.utils.tensorboard",
                      "optuna", "wandb", "mlflow", "PySide6")


def test_a_train_run_imports_no_dataset_dataframe_plot_tracker_or_sweep_library(tiny_bert, tmp_path):
    data = write_class_data(tmp_path / "c.jsonl")
    code = ("import json, sys; from ftstudio.cli import main; "
            f"rc = main(['train', '--model', {str(tiny_bert)!r}, '--dataset', {str(data)!r}, '--max-steps', '2', "
            f"'--batch-size', '4', '--seq-len', '16', '--eval-every', '1', '--device', 'cpu', '--quiet', "
            f"'--output', {str(tmp_path / 'runs')!r}]); "
            f"print(json.dumps([rc, [m for m in {NOT_IN_A_TRAIN_RUN!r} if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rc, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "runs").is_dir()
    assert loaded == [], f"a train run imported {loaded}"


def test_check_data_show_on_a_file_with_errors_says_why_no_rows_are_shown(tmp_path, capsys):
    """Trial: --show 3 on a CSV with a ragged row printed the errors and then no preview, without a word."""
    p = tmp_path / "ragged.csv"
    p.write_text("text,label\nthe cat,good\nthe dog,bad,extra\nthe sun,good\n", encoding="utf-8")
    assert main(["check-data", str(p), "--show", "3"]) == 1
    out = capsys.readouterr().out
    assert "row 3: row has 3 fields" in out and "--show 3: no rows shown while the file has errors" in out
    assert ", 2 rows (" in out   # the two good rows; and one row is "1 row"
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "the cat"}) + "\n", encoding="utf-8")
    main(["check-data", str(one), "--val-fraction", "0"])
    assert ", 1 row (1 train" in capsys.readouterr().out
