"""Loading every file kind, the seeded split, label ids, collation, packing, check_data and the demo data."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from ftstudio.core.config import DataConfig
from ftstudio.engine.data import load as data_mod
from ftstudio.engine.data import check_data, demo_dataset_path, load_records, prepare_data, resources_dir
from ftstudio.engine.data.render import IGNORE
from tiny import make_tokenizer

ROWS = [{"text": "the cat", "label": "good"}, {"text": "a dog", "label": "bad"},
        {"text": "the sun, \"quoted\"", "label": "good"}]


def _write_all(tmp_path: Path) -> dict[str, Path]:
    import datasets

    out = {}
    out["jsonl"] = tmp_path / "d.jsonl"
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out["json"] = tmp_path / "d.json"
    out["json"].write_text(json.dumps(ROWS))
    out["json_wrapped"] = tmp_path / "w.json"
    out["json_wrapped"].write_text(json.dumps({"data": ROWS}))
    out["csv"] = tmp_path / "d.csv"
    out["csv"].write_text('text,label\nthe cat,good\na dog,bad\n"the sun, ""quoted""",good\n')
    out["tsv"] = tmp_path / "d.tsv"
    out["tsv"].write_text("text\tlabel\nthe cat\tgood\na dog\tbad\nthe sun, \"quoted\"\tgood\n")
    ds = datasets.Dataset.from_list(ROWS)
    out["parquet"] = tmp_path / "d.parquet"
    ds.to_parquet(str(out["parquet"]))
    out["disk"] = tmp_path / "saved"
    ds.save_to_disk(str(out["disk"]))
    out["disk_dict"] = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(out["disk_dict"]))
    return out


def test_every_file_kind_loads_the_same_rows(tmp_path):
    for kind, path in _write_all(tmp_path).items():
        assert load_records(str(path)) == ROWS, kind


def test_plain_text_is_one_row_per_nonblank_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("the cat\n\n  \na dog\r\n")
    assert load_records(str(p)) == [{"text": "the cat"}, {"text": "a dog"}]
    report = check_data(DataConfig(dataset=str(p), val_fraction=0.0))
    assert report.format == "text" and report.rows == 2


def test_split_is_seeded_stratified_and_labels_sorted(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [{"text": f"row {i}", "label": ["b", "a", "c"][i % 3]} for i in range(60)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(dataset=str(p), val_fraction=0.2)
    tok = make_tokenizer()
    a = prepare_data(cfg, tok, task="auto", seed=1)
    b = prepare_data(cfg, tok, task="auto", seed=1)
    c = prepare_data(cfg, tok, task="auto", seed=2)
    assert a.task == "classification" and a.label_names == ["a", "b", "c"]
    assert (a.train, a.val) == (b.train, b.val) and a.val != c.val
    assert len(a.train) == 48 and len(a.val) == 12
    assert Counter(ex["label"] for ex in a.val) == {0: 4, 1: 4, 2: 4}  # stratified: 20 % of each class
    batch = a.collate(a.train[:4])
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["labels"].shape == (4,)


def test_integer_labels_sort_numerically(tmp_path):
    p = tmp_path / "i.jsonl"
    p.write_text("".join(json.dumps({"text": "x", "label": n}) + "\n" for n in (10, 2, 1, 2)))
    assert check_data(DataConfig(dataset=str(p), val_fraction=0)).labels == ["1", "2", "10"]


def test_val_dataset_and_max_rows(tmp_path):
    t, v = tmp_path / "t.jsonl", tmp_path / "v.jsonl"
    t.write_text("".join(json.dumps({"text": f"one two {i}"}) + "\n" for i in range(10)))
    v.write_text(json.dumps({"text": "three"}) + "\n")
    cfg = DataConfig(dataset=str(t), val_dataset=str(v), max_rows=4)
    report = check_data(cfg)
    assert (report.rows, report.train_rows, report.val_rows, report.tokens) == (5, 4, 1, None)


def test_causal_padding_collate(tmp_path):
    p = tmp_path / "pc.jsonl"
    p.write_text(json.dumps({"prompt": "the", "completion": " cat is good"}) + "\n" +
                 json.dumps({"prompt": "a", "completion": " dog"}) + "\n")
    tok = make_tokenizer()
    data = prepare_data(DataConfig(dataset=str(p), val_fraction=0), tok, task="causal-lm", seed=0)
    batch = data.collate(data.train)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = int(batch["attention_mask"].sum(1).argmin())
    pad_cols = batch["attention_mask"][short] == 0
    assert pad_cols.any() and (batch["labels"][short][pad_cols] == IGNORE).all()
    assert (batch["input_ids"][short][pad_cols] == tok.pad_token_id).all()


def _loss_sum(model, batch):
    out = model(**batch)
    n = int((batch["labels"][:, 1:] != IGNORE).sum())
    return out.loss * n, n, out.logits


def test_packed_loss_equals_separate_losses(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    p = tmp_path / "docs.jsonl"
    docs = ["the cat is good and the dog is bad", "one two three four", "yes no yes"]
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    base = dict(dataset=str(p), val_fraction=0.0, seq_len=16)
    sep = prepare_data(DataConfig(**base), tok, task="causal-lm", seed=0)
    packed = prepare_data(DataConfig(**base, packing=True), tok, task="causal-lm", seed=0)
    assert len(packed.train) == 2 and all(len(r["input_ids"]) <= 16 for r in packed.train)
    with torch.no_grad():
        total, count = 0.0, 0
        logits_alone = {}
        for ex in sep.train:
            s, n, lg = _loss_sum(model, sep.collate([ex]))
            total, count = total + s, count + n
            logits_alone[tuple(ex["input_ids"])] = lg[0]
        batch = packed.collate(packed.train)  # two packed rows of different lengths: the pad block too
        assert batch["attention_mask"].dim() == 4 and "position_ids" in batch
        ps, pn, plog = _loss_sum(model, batch)
    assert pn == count
    torch.testing.assert_close(ps, torch.as_tensor(total), rtol=1e-5, atol=1e-5)
    # Each document's logits inside a packed row equal its logits alone: no attention crosses documents.
    for r, row in enumerate(packed.train):
        starts = [i for i, q in enumerate(row["position_ids"]) if q == 0] + [len(row["position_ids"])]
        for a, b in zip(starts, starts[1:]):
            alone = logits_alone[tuple(row["input_ids"][a:b])]
            torch.testing.assert_close(plog[r, a:b], alone, rtol=1e-4, atol=1e-5)


def test_packed_rows_under_flex_attention_need_no_dense_mask(tiny_llama, tmp_path):
    """flex_attention + position_ids only (what the trainer sends on a GPU): the model derives the document
    masks itself, and every document's logits equal its logits alone, as with the dense 4-D mask."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    model.config.use_cache = False                    # as the trainer sets it: a KV cache disables the detection
    p = tmp_path / "docs.jsonl"
    docs = ["the cat is good and the dog is bad", "one two three four", "yes no yes", "a b c d e f"]
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    packed = prepare_data(DataConfig(dataset=str(p), val_fraction=0.0, seq_len=20, packing=True), tok,
                          task="causal-lm", seed=0)
    dense = packed.collate(packed.train)
    packed.collate.positions_only = True
    light = packed.collate(packed.train)
    assert "attention_mask" not in light and torch.equal(light["position_ids"], dense["position_ids"])
    with torch.no_grad():
        want = model(**dense).logits
        try:
            model.set_attn_implementation("flex_attention")
            got = model(**light).logits
        except Exception as e:  # noqa: BLE001 - flex needs inductor (a C++ compiler) on the CPU
            pytest.skip(f"flex_attention unavailable on this CPU: {type(e).__name__}: {e}"[:200])
    real = dense["labels"] != IGNORE                  # compare real tokens; the pad block is never scored
    real[:, 0] = True
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_check_data_on_demo_is_fast_and_complete():
    t0 = time.perf_counter()
    report = check_data(DataConfig(dataset="demo"), "demo")
    elapsed = time.perf_counter() - t0
    d = report.to_dict()
    assert elapsed < 20, elapsed  # a few seconds normally; generous for a loaded CI machine
    assert d["format"] == "classification" and d["rows"] == 480 and d["errors"] == []
    assert d["train_rows"] + d["val_rows"] == 480 and d["val_rows"] == 48
    assert d["tokens"] == d["trainable_tokens"] > 480 * 10
    assert set(d["lengths"]) == {"min", "mean", "p50", "p95", "max"}
    assert d["lengths"]["min"] <= d["lengths"]["p50"] <= d["lengths"]["p95"] <= d["lengths"]["max"]
    assert len(d["labels"]) == 8 and d["labels"] == sorted(d["labels"])
    for key in ("format", "rows", "train_rows", "val_rows", "tokens", "trainable_tokens", "errors"):
        assert key in d
    json.dumps(d)


def test_check_data_without_tokenizer_counts_rows_only():
    d = check_data(DataConfig(dataset="demo")).to_dict()
    assert (d["rows"], d["tokens"], d["trainable_tokens"], d["lengths"]) == (480, None, None, None)


def test_demo_dataset_is_balanced_and_regenerates_identically():
    import importlib.util

    path = demo_dataset_path()
    rows = load_records(str(path))
    assert 400 <= len(rows) <= 600 and set(rows[0]) == {"text", "label"}
    counts = Counter(r["label"] for r in rows)
    assert len(counts) == 8 and len(set(counts.values())) == 1
    assert len({r["text"] for r in rows}) == len(rows)
    spec = importlib.util.spec_from_file_location("mk", path.with_name("make_legal_clauses.py"))
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    assert mk.make_rows() == rows
    assert "CC0" in (path.parent / "README.md").read_text()


def test_resources_dir_falls_back_to_the_bundle(tmp_path, monkeypatch):
    """Neither inside the package (a wheel) nor beside it (the source tree): the bundle's _MEIPASS/resources."""
    from ftstudio.engine import resources as res_mod

    assert (resources_dir() / "demo" / "legal_clauses.jsonl").is_file()
    site = tmp_path / "site" / "ftstudio"
    bundle = tmp_path / "bundle"
    (bundle / "resources" / "demo").mkdir(parents=True)
    monkeypatch.setattr(res_mod, "__file__", str(site / "engine" / "resources.py"))
    monkeypatch.setattr(res_mod._res, "files", lambda package: site)
    monkeypatch.setattr("sys._MEIPASS", str(bundle), raising=False)
    assert resources_dir() == bundle / "resources"
    (site / "resources" / "demo").mkdir(parents=True)     # a wheel install: the packaged folder wins
    assert resources_dir() == site / "resources"


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_prepare_then_forward_runs(fmt, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rec = {"text": "the cat is good"} if fmt == "text" else {
        "messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "yes"}]}
    p = tmp_path / "x.jsonl"
    p.write_text((json.dumps(rec) + "\n") * 4)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    data = prepare_data(DataConfig(dataset=str(p), val_fraction=0.25), tok, task="causal-lm", seed=0)
    assert (len(data.train), len(data.val), data.format) == (3, 1, fmt)
    out = AutoModelForCausalLM.from_pretrained(tiny_llama)(**data.collate(data.train))
    assert torch.isfinite(out.loss)
