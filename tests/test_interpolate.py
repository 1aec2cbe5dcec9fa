"""θ(α) = (1−α)·θ0 + α·θ* between a run's base model and its final/ (forgetting/interpolate.py) and the α sweep
(engine/alpha_sweep.py), on tiny models: no lm-evaluation-harness needed."""
import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from ftstudio.cli import main
from ftstudio.core.events import RetentionMetrics, RunFinished
from ftstudio.engine.alpha_sweep import choose_alpha, sweep_alphas
from ftstudio.engine.forgetting.interpolate import mix, plan_interpolation, write_interpolated
from test_trainer import lm_config, run, write_class_data

GENERAL = ["one two three four five six seven eight nine ten", "the cat and the dog", "the sun and the moon",
           "hello world", "yes no good bad", "a question and an answer", "the dog is good", "the cat is bad"]
TASK = ["the party shall terminate the agreement on notice", "confidential information shall not be shared",
        "liability for damages is limited", "payment is due on notice"]


@pytest.fixture(scope="module")
def forgetful_run(tiny_llama, tmp_path_factory):
    """A base model that knows its "general" text (a short pre-training run), then fine-tuned at a high LR on
    other text: the fine-tune forgets (its retention loss rises several-fold)."""
    root = tmp_path_factory.mktemp("forget")
    rng = random.Random(0)
    general, task = root / "general.jsonl", root / "task.jsonl"
    general.write_text("".join(json.dumps({"text": f"{rng.choice(GENERAL)} {rng.choice(GENERAL)}"}) + "\n"
                               for _ in range(60)))
    task.write_text("".join(json.dumps({"text": f"{TASK[i % 4]} {TASK[(i + 1) % 4]}"}) + "\n" for i in range(48)))
    pre, _ = run(lm_config(tiny_llama, general, root / "runs", run_name="pre", max_steps=30, lr=1e-2,
                           val_fraction=0.0))
    assert isinstance(pre, RunFinished), pre
    ft, events = run(lm_config(pre.final_model, task, root / "runs", run_name="ft", max_steps=20, lr=3e-2,
                               retention_eval=True, retention_data=str(general), eval_every=10))
    assert isinstance(ft, RunFinished), ft
    retention = [e for e in events if isinstance(e, RetentionMetrics)]
    return {"run": root / "runs" / "ft", "base": pre.final_model, "final": ft.final_model, "eval": ft.eval,
            "retention": (retention[0].loss, retention[-1].loss)}


def test_alpha_0_and_1_are_the_two_models_bit_for_bit_and_half_is_their_mean(forgetful_run, tmp_path):
    from transformers import AutoModelForCausalLM

    base = load_file(f"{forgetful_run['base']}/model.safetensors")
    final = load_file(f"{forgetful_run['final']}/model.safetensors")
    assert any(not torch.equal(base[k], final[k]) for k in final)
    plan = plan_interpolation(forgetful_run["run"])
    assert plan.notes == [] and len(plan.pairs) == len(final)
    for alpha in (0.0, 0.5, 1.0):
        out = write_interpolated(forgetful_run["run"], alpha, tmp_path / f"a{alpha}", plan=plan)
        got = load_file(f"{out['output']}/model.safetensors")
        assert set(got) == set(final)
        for k in final:
            assert got[k].dtype == final[k].dtype
            want = {0.0: base[k], 1.0: final[k]}.get(alpha, (base[k] + final[k]) / 2)
            if alpha in (0.0, 1.0):
                assert torch.equal(got[k], want), (alpha, k)
            else:
                torch.testing.assert_close(got[k], want, rtol=0, atol=1e-6)
    # The folder is a complete model: config, tokenizer, chat template, generation config; transformers loads it.
    folder = tmp_path / "a0.5"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "interpolation.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "interpolation.json").read_text())["alpha"] == 0.5
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(model.state_dict()["model.norm.weight"],
                               (base["model.norm.weight"] + final["model.norm.weight"]) / 2, rtol=0, atol=1e-6)


def test_small_shards_write_an_index_that_transformers_loads(forgetful_run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = write_interpolated(forgetful_run["run"], 1.0, tmp_path / "sharded", max_shard_bytes=20_000)
    assert out["shards"] > 2
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    final = load_file(f"{forgetful_run['final']}/model.safetensors")
    assert set(index["weight_map"]) == set(final)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded")
    for k, v in final.items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(Exception, match="already exists"):
        write_interpolated(forgetful_run["run"], 1.0, tmp_path / "sharded")


def test_mix_keeps_the_dtype_and_the_end_points_exactly():
    a = torch.randn(64, dtype=torch.float32)
    b = torch.randn(64).to(torch.bfloat16)
    assert torch.equal(mix(a, b, 0.0), a.to(torch.bfloat16)) and mix(a, b, 0.0).dtype == torch.bfloat16
    assert mix(a, b, 1.0) is b
    assert torch.equal(mix(a, b, 0.3), torch.lerp(a, b.float(), 0.3).to(torch.bfloat16))
    ints = torch.arange(4)
    assert mix(ints + 1, ints, 0.5) is ints   # integer buffers are not mixed
    import ftstudio.engine.forgetting.interpolate as interp

    big0, big1 = torch.randn(37, 11), torch.randn(37, 11).to(torch.bfloat16)
    whole = mix(big0, big1, 0.7)
    chunk, interp._CHUNK = interp._CHUNK, 50           # row blocks of 4 rows: the same numbers
    try:
        assert torch.equal(mix(big0, big1, 0.7), whole) and mix(big0, big1, 0.7).dtype == torch.bfloat16
    finally:
        interp._CHUNK = chunk


def test_sweep_recovers_retention_at_low_alpha_and_keeps_the_task_at_high_alpha(forgetful_run):
    record = sweep_alphas(forgetful_run["run"], [0, 0.25, 0.5, 0.75, 1])
    pts = {p["alpha"]: p for p in record["points"]}
    # The end points are the run's own figures: its final evaluation and its first and last retention.
    assert pts[1.0]["eval_loss"] == pytest.approx(forgetful_run["eval"]["loss"], rel=1e-6)
    assert pts[0.0]["retention"] == pytest.approx(forgetful_run["retention"][0], rel=1e-6)
    assert pts[1.0]["retention"] == pytest.approx(forgetful_run["retention"][1], rel=1e-6)
    assert pts[1.0]["retention"] > 2 * pts[0.0]["retention"]           # the fine-tune forgot
    retention = [pts[a]["retention"] for a in sorted(pts)]
    task = [pts[a]["task"] for a in sorted(pts)]
    assert retention == sorted(retention) and task == sorted(task, reverse=True)   # a monotone trade-off
    chosen = record["chosen_alpha"]
    assert 0 < chosen < 1
    allowed = pts[0.0]["retention"] + (pts[1.0]["retention"] - pts[0.0]["retention"]) / 2
    assert pts[chosen]["retention"] <= allowed
    assert all(pts[a]["retention"] > allowed for a in pts if a > chosen)
    assert record["chosen"]["task_gain_kept"] > 0.5 and record["chosen"]["retention_recovered"] >= 0.5
    saved = json.loads(open(record["saved_to"]).read())
    assert saved["chosen_alpha"] == chosen and len(saved["points"]) == 5
    from ftstudio.engine.alpha_sweep import latest_sweep
    assert latest_sweep(forgetful_run["run"])["chosen_alpha"] == chosen


def test_choose_alpha_rule():
    pts = [{"alpha": 0.0, "retention": 1.0}, {"alpha": 0.5, "retention": 1.4}, {"alpha": 1.0, "retention": 3.0}]
    assert choose_alpha(pts, None)[0] == 0.5                  # within half the increase (2.0)
    assert choose_alpha(pts, 0.1)[0] == 0.0                   # a tight budget: only the base model
    assert choose_alpha(pts, 5.0)[0] == 1.0
    assert choose_alpha([{"alpha": 0.0, "retention": 2.0}, {"alpha": 1.0, "retention": 1.5}], None)[0] == 1.0
    assert choose_alpha([{"alpha": 0.0}, {"alpha": 1.0}], None)[0] is None


def test_cli_interpolate_json_and_clean_errors(forgetful_run, tmp_path, capsys):
    assert main(["interpolate", str(forgetful_run["run"]), "--alpha", "0.25", "-o", str(tmp_path / "m"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["alpha"] == 0.25 and (tmp_path / "m" / "model.safetensors").is_file()
    assert main(["interpolate", str(forgetful_run["run"]), "--alpha", "1.5"]) == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err
    assert main(["interpolate", str(tmp_path), "--alpha", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["interpolate", str(forgetful_run["run"]), "--alphas", "0.5"]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["interpolate", str(forgetful_run["run"]), "--alphas", "0,0.5,1", "-o", str(tmp_path / "chosen"),
                 "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["written"] == str(tmp_path / "chosen") and record["chosen_alpha"] == 0.5
    assert json.loads((tmp_path / "chosen" / "interpolation.json").read_text())["alpha"] == 0.5
    exported = json.loads((forgetful_run["run"] / "interpolation" / "exported.json").read_text())
    assert exported["alpha"] == 0.5 and exported["output"] == str(tmp_path / "chosen")
    assert "retention loss" in captured.err and "0.5 ←" in captured.err


def test_classifier_head_interpolates_from_its_saved_initialisation(tiny_bert, tmp_path):
    cfg = lm_config(tiny_bert, write_class_data(tmp_path / "c.jsonl"), tmp_path / "runs", max_steps=4, lr=1e-3,
                    task="classification", eval_every=0, val_fraction=0.2)
    result, _ = run(cfg)
    assert isinstance(result, RunFinished), result
    run_dir = tmp_path / "runs" / "r"
    init = load_file(run_dir / "init" / "new_params.safetensors")
    assert set(init) == {"classifier.weight", "classifier.bias"}
    plan = plan_interpolation(run_dir)
    assert any("initialisation the run saved" in n for n in plan.notes)
    out = write_interpolated(run_dir, 0.0, tmp_path / "a0", plan=plan)
    got = load_file(f"{out['output']}/model.safetensors")
    base = load_file(f"{tiny_bert}/model.safetensors")
    assert torch.equal(got["classifier.weight"], init["classifier.weight"])
    key = next(k for k in base if k.endswith("query.weight"))    # base "encoder..." -> final "bert.encoder..."
    assert torch.equal(got[f"bert.{key}"], base[key])
    record = sweep_alphas(run_dir, [0, 1], save=False)
    assert record["task_metric"] == "eval loss" and record["chosen_alpha"] is None   # the run's eval.metric
    assert all(p["task"] is not None for p in record["points"])


def test_peak_memory_is_one_shard_not_a_model(tmp_path):
    """A 128 MB model written at α = 0.5 with 8 MB shards: the host's peak grows by a few shards' worth, far
    below one model (and two models' inputs), because tensors are read one at a time from closed files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftstudio.core.config import RunConfig

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    cfg = LlamaConfig(vocab_size=1000, hidden_size=512, intermediate_size=1024, num_hidden_layers=12,
                      num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    m.save_pretrained(tmp_path / "run" / "final")
    size = sum(p.numel() * 4 for p in m.parameters())
    del m
    RunConfig().replace(source=str(tmp_path / "base")).save(tmp_path / "run" / "config.yaml")
    # A fresh process, so that its high-water mark of resident memory is the write's (and imports').
    script = textwrap.dedent(f"""
        import json
        from pathlib import Path
        from ftstudio.engine.forgetting.interpolate import plan_interpolation, write_interpolated
        def kib(field):
            line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
            return int(line.split()[1]) * 1024
        root = Path({str(tmp_path)!r})
        plan = plan_interpolation(root / "run")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")   # resets the peak resident set size (VmHWM) to the current one
        before = kib("VmRSS")
        write_interpolated(root / "run", 0.5, root / "out", plan=plan, max_shard_bytes=8 * 2**20)
        print(json.dumps({{"before": before, "peak": kib("VmHWM")}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    assert size > 120e6
    grew = m["peak"] - m["before"]
    print(f"peak grew {grew / 1e6:.1f} MB writing a {size / 1e6:.1f} MB model")
    assert grew < 0.35 * size, (m, size)    # a whole model in memory would be >= 1.0 × size (two inputs: 2.0 ×)
    assert json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == size


def test_a_gguf_base_is_read_whole_and_alpha_0_is_its_weights(tiny_llama, tmp_path):
    pytest.importorskip("gguf")
    from test_models_gguf import write_tiny_gguf
    from test_trainer import write_text_data

    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.F32.gguf")
    result, _ = run(lm_config(gguf, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=3))
    assert isinstance(result, RunFinished), result
    plan = plan_interpolation(tmp_path / "runs" / "r")
    assert any("loaded whole" in n for n in plan.notes)
    out = write_interpolated(tmp_path / "runs" / "r", 0.0, tmp_path / "a0", plan=plan)
    got = load_file(f"{out['output']}/model.safetensors")
    for k, v in load_file(tiny_llama / "model.safetensors").items():   # the GGUF holds these weights exactly
        assert torch.equal(got[k], v), k


def test_a_base_weight_without_its_theta0_is_refused_not_kept(forgetful_run, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from ftstudio.core.config import RunConfig
    from ftstudio.core.errors import ModelError

    base = tmp_path / "base"
    shutil.copytree(forgetful_run["base"], base)
    sd = load_file(base / "model.safetensors")
    sd["model.layers.0.renamed.weight"] = sd.pop("model.layers.0.mlp.up_proj.weight")
    save_file(sd, str(base / "model.safetensors"), metadata={"format": "pt"})
    run_dir = tmp_path / "run"
    shutil.copytree(forgetful_run["run"] / "final", run_dir / "final")
    RunConfig.load(forgetful_run["run"] / "config.yaml").replace(source=str(base)).save(run_dir / "config.yaml")
    with pytest.raises(ModelError, match="model.layers.0.mlp.up_proj.weight"):
        plan_interpolation(run_dir)
