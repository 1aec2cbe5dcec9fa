"""Issue 18: batches reach the device without host stalls (pinned, non-blocking copies; packed rows' masks
built on the device; one device sync per step), and length-grouped batches (less padding, same rows, resumable)."""
from __future__ import annotations

import sys

import pytest
import torch

from ftstudio.core.config import RunConfig
from ftstudio.core.events import LogLine, RunFinished
from ftstudio.engine.data.collate import Collator, device_batch, pack
from ftstudio.engine.train.schedule import _epoch_order, padded_tokens, plan_schedule, row_stats

from test_trainer import lm_config, run, write_class_data, write_text_data


def _old_collate(batch, pad_id, packed):
    """The collator as it was before this change (commit 6aa67ad): the dense mask built on the host."""
    from ftstudio.engine.data.collate import block_causal_mask
    L = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), L), dtype=torch.long)
    for i, ex in enumerate(batch):
        ids[i, :len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
        mask[i, :len(ex["input_ids"])] = 1
    labels = torch.full((len(batch), L), -100, dtype=torch.long)
    for i, ex in enumerate(batch):
        labels[i, :len(ex["labels"])] = torch.tensor(ex["labels"])
    if not packed:
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    pos = torch.zeros((len(batch), L), dtype=torch.long)
    for i, ex in enumerate(batch):
        own = ex.get("position_ids") or list(range(len(ex["input_ids"])))
        pos[i, :len(own)] = torch.tensor(own)
        pos[i, len(own):] = torch.arange(L - len(own))
    return {"input_ids": ids, "attention_mask": block_causal_mask(pos), "labels": labels, "position_ids": pos}


def _docs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(3, 14, (1,), generator=g))
        ids = torch.randint(5, 60, (k,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    return out


def test_packed_rows_get_the_same_mask_and_loss_with_the_mask_built_on_the_device(tiny_llama):
    from transformers import AutoModelForCausalLM

    rows = pack(_docs(20), 32)
    rows[-1] = {"input_ids": rows[-1]["input_ids"][:9], "labels": rows[-1]["labels"][:9]}  # a general row
    assert len(rows) >= 3 and any(r["position_ids"].count(0) > 1 for r in rows[:-1])
    old = _old_collate(rows, 0, packed=True)
    collate = Collator(0, "causal-lm", packed=True)
    new = device_batch(collate, rows, "cpu")
    assert "attention_mask" not in new, "no L×L mask built on the host nor copied"
    inputs = new.inputs()
    assert old.keys() == inputs.keys() and old["attention_mask"].dim() == 4
    for k in old:
        assert torch.equal(old[k], inputs[k]), k
    assert new.items == int((old["labels"][:, 1:] != -100).sum()) and new.tokens == old["input_ids"].numel()
    assert all(torch.equal(v, collate(rows)[k]) for k, v in old.items())   # __call__ keeps its old output
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with torch.no_grad():
        a, b = model(**old).loss, model(**inputs).loss
    assert torch.isfinite(a) and torch.equal(a, b)


def test_a_padded_batch_without_padding_drops_its_all_ones_mask_and_keeps_its_loss(tiny_llama):
    from transformers import AutoModelForCausalLM

    docs = [d for d in _docs(80) if len(d["input_ids"]) == 7][:3]
    assert len(docs) == 3
    collate = Collator(0, "causal-lm")
    new = device_batch(collate, docs, "cpu")
    assert "attention_mask" not in new and new.tokens == 21     # transformers would test it with .all()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    with torch.no_grad():
        assert torch.equal(model(**collate(docs)).loss, model(**new.inputs()).loss)
    mixed = device_batch(collate, _docs(4), "cpu")
    assert mixed["attention_mask"].shape == mixed["input_ids"].shape    # with padding it stays


_CONVERSIONS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


@pytest.mark.parametrize("packing", [False, True])
def test_one_device_sync_per_step_and_figures_only_at_log_steps(packing, tiny_llama, tmp_path, monkeypatch):
    """Every tensor → Python conversion that ftstudio's step path makes, by the ftstudio function that made it: the
    non-finite check once per step, the loss and gradient norm at log steps, and host-side counts of the CPU
    batch before its copy (collate.py). Nothing else: a new .item() on the step path fails here."""
    seen: dict = {}

    def spy(name, real):
        def conversion(self, *a, **kw):
            frame, near, in_loop = sys._getframe(1), None, False
            while frame is not None:
                path = frame.f_code.co_filename.replace("\\", "/")
                if "/ftstudio/" in path:
                    near = near or f"{path.rsplit('/', 1)[-1]}:{frame.f_code.co_name}"
                    in_loop = in_loop or frame.f_code.co_name == "_loop"
                frame = frame.f_back
            direct = "/ftstudio/" in sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if in_loop and direct:   # made by our code (not torch.optim's CPU step counters, nor transformers)
                seen[near] = seen.get(near, 0) + 1
            return real(self, *a, **kw)
        return conversion
    for name in _CONVERSIONS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    steps, every, accum = 6, 3, 2
    cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=steps,
                    log_every=every, eval_every=0, packing=packing, grad_accum=accum)
    result, _ = run(cfg)
    monkeypatch.undo()
    assert isinstance(result, RunFinished), result
    ours = seen
    host = {k: v for k, v in ours.items() if k.startswith("collate.py")}
    assert sum(host.values()) == (1 if packing else 2) * steps * accum   # trained items (+ padded tokens)
    assert ours.get("trainer.py:_loop") == steps + 2 * (steps // every)  # isfinite once a step; loss, norm logged
    once = {"figures.py:_report_first_step"}    # the first-step check (issue 30): after step 1 only
    assert set(ours) - set(host) - {"trainer.py:_loop"} <= {"schedule.py:_epoch_order", "schedule.py:grouped_order",
                                                            *once}


def test_batches_come_from_pinned_memory_with_non_blocking_copies(monkeypatch):
    """On CUDA (simulated: pin_memory and the copy are recorded, the CPU cannot pin)."""
    made, copies = [], []
    real_full, real_zeros = torch.full, torch.zeros

    def full(*a, pin_memory=False, **kw):
        made.append(pin_memory)
        return real_full(*a, **kw)

    def zeros(*a, pin_memory=False, **kw):
        made.append(pin_memory)
        return real_zeros(*a, **kw)
    monkeypatch.setattr(torch, "full", full)
    monkeypatch.setattr(torch, "zeros", zeros)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: copies.append((a, kw)) or self)
    rows = pack(_docs(12), 32)
    batch = device_batch(Collator(0, "causal-lm", packed=True), rows, "cuda:0")
    assert made and all(made) and len(copies) == 3 and "attention_mask" not in batch
    assert all(a == ("cuda:0",) and kw == {"non_blocking": True} for a, kw in copies)


# ---------------------------------------------------------------- length-grouped batches
def _lengths(n=437, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(4, 257, (n,), generator=g)]


def _cfg(**kw):
    return RunConfig().replace(**{"batch_size": 8, "seed": 5, "epochs": 3.0, **kw})


def test_length_grouped_batches_pad_less_and_read_every_row_once_per_epoch():
    lengths = _lengths()
    s = plan_schedule(_cfg(), len(lengths), 0, None, None, lengths)
    plain, grouped = s.padding
    per_epoch = s.batches_per_epoch
    for epoch in range(3):
        batches = [s.batch_indices(epoch * per_epoch + b) for b in range(per_epoch)]
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths))), epoch     # every row once, none twice
        assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == len(lengths) % 8
        counted = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
        if epoch == 0:
            assert counted == grouped     # the logged figure is the padding the collator will add
            assert max(lengths[i] for i in batches[0]) == max(lengths)   # the longest batch first
        assert counted < 0.1 * plain      # random lengths 4..256: grouping removes most of the padding
    assert plain == padded_tokens(_epoch_order(len(lengths), 5, 0), lengths, 8)
    assert s.epoch_order(1) != s.epoch_order(0)                  # each epoch its own order


def test_length_grouped_order_is_a_function_of_the_seed():
    lengths = _lengths()
    a = plan_schedule(_cfg(), len(lengths), 0, None, None, lengths)
    b = plan_schedule(_cfg(), len(lengths), 0, None, None, lengths)
    c = plan_schedule(_cfg(seed=6), len(lengths), 0, None, None, lengths)
    assert [a.batch_indices(i) for i in range(120)] == [b.batch_indices(i) for i in range(120)]
    assert [a.batch_indices(i) for i in range(55)] != [c.batch_indices(i) for i in range(55)]
    # A resumed run plans a fresh schedule and reads from its micro-batch number: the same rows.
    fresh = plan_schedule(_cfg(), len(lengths), 0, None, None, lengths)
    assert [fresh.batch_indices(i) for i in range(77, 120)] == [a.batch_indices(i) for i in range(77, 120)]


def test_grouping_applies_to_padded_rows_only_and_can_be_turned_off():
    rows = [{"input_ids": [1] * n, "labels": [1] * n} for n in _lengths(50)]
    assert row_stats(rows, [], _cfg())[2] == [len(r["input_ids"]) for r in rows]
    assert row_stats(rows, [], _cfg(group_by_length=False))[2] is None
    packed = pack(rows, 300)
    assert row_stats(packed, [], _cfg())[2] is None
    assert row_stats(rows, rows[:5], _cfg(mix_fraction=0.2))[2] is None
    plain = plan_schedule(_cfg(), 50, 0, None, None, None)
    assert plain.padding is None and plain.epoch_order(0) == _epoch_order(50, 5, 0)


def test_fsdp_ranks_read_disjoint_shares_of_the_grouped_order():
    from ftstudio.engine.distributed.fsdp import _RankSchedule

    lengths = _lengths(203)
    s = plan_schedule(_cfg(grad_accum=2), len(lengths), 0, None, None, lengths)
    ranks = [_RankSchedule(s, 2, r) for r in range(2)]
    per_rank = s.batches_per_epoch // 2
    shares = [{i for m in range(per_rank) for i in r.batch_indices(m)} for r in ranks]
    assert not shares[0] & shares[1]
    assert s.batches_per_epoch == 2 * per_rank and shares[0] | shares[1] == set(range(203))   # all, once


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_a_run_says_what_grouping_saves(kind, tiny_llama, tiny_bert, tmp_path):
    if kind == "lm":
        cfg = lm_config(tiny_llama, write_text_data(tmp_path / "d.jsonl"), tmp_path / "runs", max_steps=2)
    else:
        cfg = lm_config(tiny_bert, write_class_data(tmp_path / "c.jsonl"), tmp_path / "runs", max_steps=2)
    _, events = run(cfg)
    lines = [e.message for e in events if isinstance(e, LogLine) and e.message.startswith("Length-grouped")]
    assert len(lines) == 1 and lines[0].startswith("Length-grouped batches: on (padding per epoch ")
    _, events = run(cfg.replace(run_name="off", group_by_length=False))
    assert not any(isinstance(e, LogLine) and "Length-grouped" in e.message for e in events)
    if kind == "lm":
        _, events = run(cfg.replace(run_name="packed", packing=True))
        assert any(isinstance(e, LogLine) and e.message == "Length-grouped batches: off (packed rows fill "
                   "seq_len already)" for e in events)
