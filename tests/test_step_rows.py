"""Issue 30: a step's rows are the step's, however it is cut. Length grouping works over the rows of a whole
step (batch × grad_accum, × ranks), so 4 × 1, 2 × 2 and 1 × 4 read the same rows and make the same update."""
from __future__ import annotations

import json

import pytest
import torch

from ftstudio.core.config import RunConfig
from ftstudio.core.events import RunFinished
from ftstudio.engine.train.schedule import plan_schedule

from test_trainer import lm_config, run

WORDS = ("the contract shall terminate on notice and the party shall pay the damages of a year "
         "confidential information liability is limited the user asked a question").split()


def write_varied(path, n=24, seed=0):
    """Rows of very different lengths (2 to 50 words): length grouping reorders them a lot."""
    g = torch.Generator().manual_seed(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = [2, 50, 5, 30, 3, 45, 8, 20][i % 8] + int(torch.randint(0, 3, (1,), generator=g))
            words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
            fh.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def _weights(run_dir):
    from safetensors.torch import load_file
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _lengths(n=203, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [int(x) for x in torch.randint(4, 257, (n,), generator=g)]


@pytest.mark.parametrize("n", [203, 200, 7])
def test_each_step_reads_the_same_rows_however_it_is_cut(n):
    lengths = _lengths(n)
    cfg = RunConfig().replace(seed=5, epochs=2.0)
    steps = {}
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        s = plan_schedule(cfg.replace(batch_size=batch, grad_accum=accum), n, 0, None, None, lengths)
        assert s.total_steps == 2 * -(-n // 4)       # an epoch is whole steps, however they are cut
        steps[(batch, accum)] = [sorted(i for k in range(accum) for i in s.batch_indices(st * accum + k))
                                 for st in range(s.total_steps)]
        for epoch in range(2):
            per = s.batches_per_epoch
            flat = [i for b in range(per) for i in s.batch_indices(epoch * per + b)]
            assert sorted(flat) == list(range(n))   # every row once an epoch
    assert steps[(4, 1)] == steps[(2, 2)] == steps[(1, 4)]


def test_the_rows_of_a_micro_batch_are_of_similar_length():
    lengths = _lengths(400)
    s = plan_schedule(RunConfig().replace(seed=5, batch_size=4, grad_accum=4), 400, 0, None, None, lengths)
    step0 = [s.batch_indices(k) for k in range(4)]
    assert max(lengths[i] for i in step0[0]) == max(lengths)       # the longest step first
    spans = [lengths[b[0]] - lengths[b[-1]] for b in step0]          # each micro-batch sorted, consecutive
    assert all(lengths[b[0]] >= lengths[b[-1]] for b in step0) and sum(spans) < 40


def test_a_short_last_step_spreads_its_rows_over_the_micro_batches():
    s = plan_schedule(RunConfig().replace(seed=5, batch_size=4, grad_accum=2, max_steps=4), 11, 0, None, None,
                      _lengths(11))
    assert s.batches_per_epoch == 4
    assert [len(s.batch_indices(k)) for k in range(4)] == [4, 4, 2, 1]


# AdamW (the default) divides each gradient by its own running size, which magnifies float noise on gradients near
# zero: at lr 1e-2 the three cuts end 1e-5 apart even without grouping; at 1e-3, 1e-6. SGD shows the gradients
# themselves: 4e-9 apart. Grouping per micro-batch (before issue 30): 0.059 apart, other rows in each step.
@pytest.mark.parametrize("group, optimizer, lr, tol", [(True, "adamw", 1e-3, 1e-5), (False, "adamw", 1e-3, 1e-5),
                                                      (True, "sgd", 1e-2, 1e-7)])
def test_4x1_2x2_and_1x4_make_the_same_update(group, optimizer, lr, tol, tiny_llama, tmp_path):
    data = write_varied(tmp_path / "d.jsonl")
    out = {}
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        cfg = lm_config(tiny_llama, data, tmp_path / "runs", run_name=f"b{batch}a{accum}", batch_size=batch,
                        grad_accum=accum, max_steps=3, eval_every=0, val_fraction=0.0, seq_len=64, lr=lr,
                        group_by_length=group, warmup_ratio=0.0, schedule="constant", optimizer=optimizer)
        result, _ = run(cfg)
        assert isinstance(result, RunFinished), result
        out[(batch, accum)] = _weights(tmp_path / "runs" / cfg.train.run_name)
    base = _weights_of_start(tiny_llama)
    moved = max(float((out[(4, 1)][k] - base[k]).abs().max()) for k in base)
    assert moved > 1e-4                                   # the steps changed the weights
    for other in ((2, 2), (1, 4)):
        diff = max(float((out[(4, 1)][k] - out[other][k]).abs().max()) for k in base)
        assert diff < tol, (other, diff)


def _weights_of_start(model_dir):
    from safetensors.torch import load_file
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def test_two_ranks_read_the_rows_of_one_process_step_for_step():
    """Under FSDP the global schedule groups batch × grad_accum × ranks rows (FSDPTrainer._plan_schedule passes
    grad_accum × W); rank r reads global micro-batches r, W + r, ...: the ranks' rows of a step together are the
    rows one process reads in that step."""
    from ftstudio.engine.distributed.fsdp import _RankSchedule

    lengths, cfg = _lengths(203), RunConfig().replace(seed=5, epochs=2.0)
    one = plan_schedule(cfg.replace(batch_size=4, grad_accum=1), 203, 0, None, None, lengths)
    glob = plan_schedule(cfg.replace(batch_size=1, grad_accum=2 * 2), 203, 0, None, None, lengths)  # 2 ranks × 2
    ranks = [_RankSchedule(glob, 2, r) for r in range(2)]
    assert one.total_steps == glob.total_steps
    for step in range(one.total_steps):
        mine = sorted(i for r in ranks for k in range(2) for i in r.batch_indices(step * 2 + k))
        assert mine == sorted(one.batch_indices(step)), step


def test_an_epochs_last_step_gives_every_rank_a_row():
    from ftstudio.engine.distributed.fsdp import _RankSchedule
    from ftstudio.engine.train.schedule import schedule_warning

    cfg = RunConfig().replace(seed=5, batch_size=2, grad_accum=2, epochs=1.0)   # global: 2 ranks × grad_accum 1
    glob = plan_schedule(cfg, 9, 0, None, None, _lengths(9))                    # 9 = 2 steps of 4 + 1 row
    glob.ranks = 2
    ranks = [_RankSchedule(glob, 2, r) for r in range(2)]
    last = [r.batch_indices(2) for r in ranks]                                  # step 3, one micro-batch each
    assert all(len(b) == 1 for b in last) and last[1][0] == glob.epoch_order(0)[0]
    assert "repeats 1 of the epoch's first rows" in schedule_warning(cfg, glob)
