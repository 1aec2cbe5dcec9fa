"""`ftstudio estimate`'s payload: keys, the seed's table, and an answer in under 2 s without torch."""
import json
import subprocess
import sys
import time

from ftstudio.engine.memory import estimate_report, format_report, seed_table

KEYS = {"params", "textbook_bytes", "peak_bytes", "breakdown", "max_batch_size"}


def test_seed_table_reproduced():
    rows = {r["model"]: r for r in seed_table()}
    assert rows["LLaMA-7B"]["total_gb"] == 115.2 and rows["LLaMA-7B"]["min_gpus"] == 2
    assert rows["LLaMA-13B"]["weights_grads_optimizer_gb"] == 208.0 and rows["LLaMA-13B"]["min_gpus"] == 3
    assert rows["LLaMA-70B"]["activations_gb"] == 16.1 and rows["LLaMA-70B"]["min_gpus"] == 15


def test_report_from_params_hidden_layers():
    r = estimate_report(params=7e9, hidden=4096, layers=32, seq_len=2048, batch_size=1, gpu_memory_gb=80)
    assert KEYS <= set(r) and set(r["breakdown"]) >= {"weights", "gradients", "optimizer", "activations", "other"}
    assert r["params"] == 7_000_000_000
    assert r["textbook_bytes"] == 16 * 7e9 + 2048 * 4096 * 32 * 12
    assert r["peak_bytes"] == sum(r["breakdown"].values())
    assert r["fits"] is False and r["max_batch_size"] == 0 and r["min_gpus"] == 2
    assert len(r["seed_table"]) == 3 and r["suggestions"]
    text = format_report(r)
    assert "textbook" in text and "LLaMA-70B" in text and "does NOT fit" in text


def test_report_from_folder(tiny_llama):
    r = estimate_report(str(tiny_llama), seq_len=256, batch_size=4, precision="bf16-mixed", gpu_memory_gb=24)
    assert r["params_exact"] and r["fits"] and r["max_batch_size"] > 4
    assert json.loads(json.dumps(r)) == r                      # the --json line is plain JSON
    assert "seed_table" not in r


def test_answers_fast_without_torch(tiny_llama):
    code = ("import sys, json; from ftstudio.engine.memory import estimate_report, format_report; "
            f"r = estimate_report({str(tiny_llama)!r}, seq_len=512, batch_size=8, loss='chunked', "
            "activation_checkpointing=True, gpus=2, gpu_memory_gb=80); format_report(r); "
            "print(json.dumps(r)); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert p.returncode == 0, p.stderr
    assert KEYS <= set(json.loads(p.stdout.splitlines()[-1]))
    assert elapsed < 2.0, f"estimate took {elapsed:.2f} s"


def test_estimate_reads_a_gguf_file_without_torch(tiny_llama, tmp_path):
    """MODEL may be a .gguf file: its metadata gives the same shape as the HF folder it came from."""
    import json
    import subprocess
    import sys

    from test_models_gguf import write_tiny_gguf  # the GGUF writer the model tests use

    gguf = write_tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    code = ("import json, sys; from ftstudio.engine.memory import estimate_report; "
            f"r = estimate_report({str(gguf)!r}, seq_len=64, batch_size=2, precision='bf16-mixed', optimizer='adamw', "
            "loss='full', activation_checkpointing=False, gpus=1, gpu_memory_gb=24); "
            "print(json.dumps([r['params'], 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    params, torch_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    from ftstudio.engine.memory import load_shape
    assert params == load_shape(str(tiny_llama))[0].params and torch_loaded is False
