"""Benchmarks through lm-evaluation-harness (engine/benchmarks.py, `ftstudio eval`): local task files only, tiny
models. The tests that run the harness skip when it is not installed (the `eval` extra); the record's arithmetic
and the missing-harness message are tested without it."""
import hashlib
import json
import math
import sys

import pytest

from ftstudio.cli import main
from ftstudio.core.errors import ConfigError, FTStudioError
from ftstudio.core.events import RunFinished
from ftstudio.engine.benchmarks import BenchSettings, delta, run_benchmarks, scores_of
from test_trainer import lm_config, run, write_text_data

# Every word is in the tiny tokenizer's vocabulary (tests/tiny.py), so the choices' likelihoods differ.
ROWS = [("one two three", ["four", "cat", "moon"], 0), ("the cat and the", ["dog", "payment", "nine"], 0),
        ("the sun and the", ["moon", "contract", "ten"], 0), ("yes or", ["no", "world", "six"], 0),
        ("hello", ["world", "damages", "seven"], 0), ("five six", ["seven", "party", "good"], 0),
        ("the party shall", ["terminate", "cat", "moon"], 0), ("question and", ["answer", "dog", "sun"], 0)]

TASK_YAML = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/tiny_mc.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 2.0
"""


def write_task(folder):
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "tiny_mc.jsonl").write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in ROWS))
    (folder / "tiny_mc.yaml").write_text(TASK_YAML)
    return folder


def test_scores_and_delta_from_harness_results():
    raw = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 0.25,
                             "exact_match_stderr,strict": "N/A"}}}
    assert scores_of(raw) == {"t": {"acc": {"value": 0.5, "stderr": 0.1},
                                    "exact_match,strict": {"value": 0.25, "stderr": None}}}
    d = delta({"t": {"acc": {"value": 0.5, "stderr": 0.1}}}, {"t": {"acc": {"value": 0.75, "stderr": 0.2}}})
    assert d["t"]["acc"]["value"] == pytest.approx(0.25)
    assert d["t"]["acc"]["stderr"] == pytest.approx(math.sqrt(0.01 + 0.04))


def test_missing_harness_is_one_line_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)   # import lm_eval raises ImportError
    with pytest.raises(FTStudioError, match=r"pip install 'ftstudio\[eval\]'"):
        run_benchmarks(str(tmp_path), BenchSettings(tasks=["tiny_mc"]))
    assert main(["eval", str(tmp_path), "--tasks", "tiny_mc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'ftstudio[eval]'" in err[0]


def test_settings_are_checked_before_anything_loads():
    with pytest.raises(ConfigError, match="--limit"):
        BenchSettings(tasks=["x"], limit=2.5).check()
    with pytest.raises(ConfigError, match="--include-path"):
        BenchSettings(tasks=["x"], include_path=["/nonexistent/tasks"]).check()
    with pytest.raises(ConfigError, match="--num-fewshot"):
        BenchSettings(tasks=["x"], num_fewshot=-1).check()


@pytest.fixture(scope="module")
def tuned_run(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    result, _ = run(lm_config(tiny_llama, write_text_data(root / "d.jsonl"), root / "runs", max_steps=8, lr=3e-2))
    assert isinstance(result, RunFinished), result
    return root / "runs" / "r"


def test_run_scores_base_and_fine_tuned_under_one_recorded_setting(tuned_run, tiny_llama, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)     # the task's relative data_files resolve against its YAML, not the cwd
    settings = BenchSettings(tasks=["tiny_mc"], include_path=[str(tasks)], batch_size=4, seed=7, num_fewshot=0)
    record = run_benchmarks(str(tuned_run), settings)
    s = record["settings"]
    assert s["lm_eval_version"] == lm_eval.__version__ and s["seed"] == 7 and s["num_fewshot"] == 0
    assert s["apply_chat_template"] is False and s["batch_size"] == 4 and s["device"] == "cpu"
    facts = record["tasks"]["tiny_mc"]
    assert facts["version"] == 2.0 and facts["num_fewshot"] == 0 and facts["documents"] == len(ROWS)
    assert facts["data_sha256"] == hashlib.sha256((tasks / "data" / "tiny_mc.jsonl").read_bytes()).hexdigest()
    assert facts["yaml"].endswith("tiny_mc.yaml")
    base = record["models"]["base"]["scores"]["tiny_mc"]["acc"]
    tuned = record["models"]["fine_tuned"]["scores"]["tiny_mc"]["acc"]
    assert record["models"]["base"]["source"] == str(tiny_llama)
    assert record["delta"]["tiny_mc"]["acc"]["value"] == pytest.approx(tuned["value"] - base["value"])
    assert base["stderr"] is not None and 0 <= base["value"] <= 1
    # The harness loading the same folder by itself gives the same score as FT Studio's adapter (alone, it reads
    # the relative data_files from the current directory: a copy is put there).
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    (elsewhere / "data").mkdir()
    (elsewhere / "data" / "tiny_mc.jsonl").write_bytes((tasks / "data" / "tiny_mc.jsonl").read_bytes())
    own = simple_evaluate(model="hf", model_args={"pretrained": str(tuned_run / "final"), "device": "cpu",
                                                  "dtype": "float32"},
                          tasks=["tiny_mc"], num_fewshot=0, batch_size=4, log_samples=False,
                          task_manager=TaskManager(include_path=[str(tasks)], include_defaults=False),
                          random_seed=7, numpy_random_seed=7, torch_random_seed=7, fewshot_random_seed=7)
    assert own["results"]["tiny_mc"]["acc,none"] == pytest.approx(tuned["value"])


def test_cli_eval_writes_the_record_atomically_and_prints_the_table(tuned_run, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    assert main(["eval", str(tuned_run), "--tasks", "tiny_mc", "--include-path", str(tasks), "--limit", "5",
                 "--batch-size", "2", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    saved = record["saved_to"]
    assert saved.startswith(str(tuned_run / "benchmarks")) and json.loads(open(saved).read())["delta"]
    assert not list((tuned_run / "benchmarks").glob("*.tmp"))
    from ftstudio.engine.benchmarks import latest_record
    assert latest_record(tuned_run)["created"] == record["created"]
    assert record["settings"]["limit"] == 5 and record["tasks"]["tiny_mc"]["documents"] == 5
    assert "Fine-tuned" in captured.err and "Δ" in captured.err and "±" in captured.err


def test_unknown_task_names_the_task_and_the_fix(tuned_run, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    with pytest.raises(ConfigError, match="unknown task 'tiny_mcq'.*did you mean tiny_mc"):
        run_benchmarks(str(tuned_run), BenchSettings(tasks=["tiny_mcq"], include_path=[str(tasks)]))


def test_bundled_task_scores_a_plain_model_and_chat_template_needs_one(tiny_llama_no_template, capsys):
    pytest.importorskip("lm_eval")
    record = run_benchmarks(str(tiny_llama_no_template), BenchSettings(tasks=["ftstudio_general_mc"], limit=3))
    assert set(record["models"]) == {"model"} and "delta" not in record and record["run"] is None
    assert record["tasks"]["ftstudio_general_mc"]["documents"] == 3
    assert main(["eval", str(tiny_llama_no_template), "--tasks", "ftstudio_general_mc", "--limit", "2",
                 "--apply-chat-template"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "has no chat template" in err[-1] and "Traceback" not in "".join(err)


def test_eval_benchmarks_score_theta0_before_and_the_weights_after_a_run(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    from ftstudio.core.events import LogLine

    tasks = write_task(tmp_path / "tasks")
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=8, lr=3e-2,
                    benchmarks="tiny_mc", benchmark_include=str(tasks), benchmark_limit=6)
    result, events = run(cfg)
    assert isinstance(result, RunFinished), result
    record = json.loads((tmp_path / "runs" / "r" / "benchmarks" / "run.json").read_text())
    assert record["models"]["base"]["step"] == 0 and record["models"]["fine_tuned"]["step"] == 8
    assert record["settings"]["limit"] == 6 and record["tasks"]["tiny_mc"]["documents"] == 6
    base = record["models"]["base"]["scores"]["tiny_mc"]["acc"]["value"]
    tuned = record["models"]["fine_tuned"]["scores"]["tiny_mc"]["acc"]["value"]
    assert record["delta"]["tiny_mc"]["acc"]["value"] == pytest.approx(tuned - base)
    said = [e.message for e in events if isinstance(e, LogLine) and e.message.startswith("Benchmark: ")]
    assert len(said) == 2 and "Δ" in said[-1]
    # θ0 scored inside the run equals the base model scored on its own under the same settings
    alone = run_benchmarks(str(tiny_llama), BenchSettings(tasks=["tiny_mc"], include_path=[str(tasks)], limit=6,
                                                          batch_size=4, seed=3))
    assert alone["models"]["model"]["scores"]["tiny_mc"]["acc"]["value"] == pytest.approx(base)


def test_eval_benchmarks_with_an_unknown_task_stop_the_run_before_it_trains(tiny_llama, tmp_path):
    pytest.importorskip("lm_eval")
    from ftstudio.core.events import RunFailed, StepMetrics

    tasks = write_task(tmp_path / "tasks")
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=4,
                    benchmarks="tiny_mcx", benchmark_include=str(tasks))
    result, events = run(cfg)
    assert isinstance(result, RunFailed) and "eval.benchmarks" in result.reason and "tiny_mc" in result.reason
    assert not any(isinstance(e, StepMetrics) for e in events)


def test_a_cuda_device_torch_cannot_see_is_one_line(tuned_run, capsys):
    pytest.importorskip("lm_eval")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["eval", str(tuned_run), "--tasks", "ftstudio_general_mc", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch sees no CUDA GPU" in err[0]


def test_sweep_benchmarks_at_the_end_points_equal_base_and_fine_tuned(tuned_run, tmp_path):
    pytest.importorskip("lm_eval")
    from ftstudio.engine.alpha_sweep import sweep_alphas

    tasks = write_task(tmp_path / "tasks")
    bench = BenchSettings(tasks=["tiny_mc"], include_path=[str(tasks)], batch_size=4)
    record = run_benchmarks(str(tuned_run), bench)
    sweep = sweep_alphas(tuned_run, [0, 0.5, 1], bench=bench, save=False)
    pts = {p["alpha"]: p["benchmarks"]["tiny_mc/acc"] for p in sweep["points"]}
    assert pts[0.0] == pytest.approx(record["models"]["base"]["scores"]["tiny_mc"]["acc"]["value"])
    assert pts[1.0] == pytest.approx(record["models"]["fine_tuned"]["scores"]["tiny_mc"]["acc"]["value"])


def test_chat_template_on_scores_both_models_through_the_fine_tunes_template(tuned_run, tmp_path):
    pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    record = run_benchmarks(str(tuned_run), BenchSettings(tasks=["tiny_mc"], include_path=[str(tasks)], limit=3,
                                                          apply_chat_template=True))
    shas = {m["chat_template_sha256"] for m in record["models"].values()}
    assert len(shas) == 1 and None not in shas
    assert record["settings"]["apply_chat_template"] is True and record["settings"]["fewshot_as_multiturn"] is True


def test_a_task_whose_data_cannot_be_loaded_is_one_line(tiny_llama, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = write_task(tmp_path / "tasks")
    (tasks / "data" / "tiny_mc.jsonl").unlink()
    assert main(["eval", str(tiny_llama), "--tasks", "tiny_mc", "--include-path", str(tasks)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "could not load a task's data" in err[-1] and "internal error" not in err[-1]


def test_stop_between_the_harness_batches_raises_and_keeps_nothing(tiny_llama, tmp_path):
    """Stop asked after k batches: the harness stops before batch k + 1 (not at the end of the task)."""
    pytest.importorskip("lm_eval")
    from ftstudio.engine.benchmarks import BenchmarkStopped, evaluate_model, resolve_tasks
    from ftstudio.engine.models import load_model
    from ftstudio.core.config import ModelConfig

    tasks = write_task(tmp_path / "tasks")
    settings = BenchSettings(tasks=["tiny_mc"], include_path=[str(tasks)], batch_size=1, device="cpu")
    loaded = load_model(ModelConfig(source=str(tiny_llama), task="causal-lm"), task="causal-lm")
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 3   # three batches scored, the fourth is refused
    with pytest.raises(BenchmarkStopped, match="after 3 batch"):
        evaluate_model(loaded.model, loaded.tokenizer, settings, resolve_tasks(settings), device="cpu",
                       should_stop=should_stop)
    assert len(asked) == 4   # 24 requests (8 rows × 3 choices) at batch 1: it did not run to the end
    whole = evaluate_model(loaded.model, loaded.tokenizer, settings, resolve_tasks(settings), device="cpu",
                           should_stop=lambda: False)
    assert whole["scores"]["tiny_mc"]["acc"]["value"] is not None


def test_eval_benchmarks_inside_a_run_obey_the_runs_stop(tiny_llama, tmp_path):
    """Stop pressed while θ0 is being benchmarked: the pass ends within a batch, is not recorded, the run stops
    at its first step boundary (a checkpoint to resume from), and the log says why the scores are missing."""
    pytest.importorskip("lm_eval")
    from ftstudio.core.control import Control
    from ftstudio.core.events import LogLine, StepMetrics

    tasks = write_task(tmp_path / "tasks")
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=8,
                    benchmarks="tiny_mc", benchmark_include=str(tasks), batch_size=1)
    control, events = Control(), []

    def report(e):
        events.append(e)
        if isinstance(e, LogLine) and e.message.startswith("Benchmarks (tiny_mc) of the base"):
            control.request_stop()   # while the harness is about to score θ0
    from ftstudio.engine.train import Trainer
    result = Trainer(cfg, report, control).run()
    assert isinstance(result, RunFinished) and result.status == "stopped", result
    assert not any(isinstance(e, StepMetrics) for e in events)
    said = [e.message for e in events if isinstance(e, LogLine)]
    assert any("benchmarks stopped after 0 batch" in m for m in said), said
    assert not (tmp_path / "runs" / "r" / "benchmarks" / "run.json").exists()
