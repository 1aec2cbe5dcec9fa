"""The run's steps and the learning rate over them, as plain functions of the step, so the GUI can draw them
before any torch import. ``plan_schedule`` says how many optimizer steps a run has and which rows each
micro-batch reads; the learning-rate schedules below say what each step's LR is.

Learning-rate schedules:

All three start with a linear warmup over W steps (it keeps the first, noisy updates of a pre-trained model
small): step s (0-based) runs at peak · (s+1)/W, so the first step runs at peak/W, not 0 (a step at 0 would
change nothing), and step W−1 at the peak; then:
  cosine   lr = floor + (peak − floor) · ½(1 + cos(π·p))        p = progress through the decay, 0 → 1
  constant lr = peak
  linear   lr = floor + (peak − floor) · (1 − p)
where floor = min_lr_ratio · peak.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from ftstudio.core.config import RunConfig, ScheduleConfig
from ftstudio.core.errors import ConfigError


def warmup_steps_for(cfg: ScheduleConfig, total_steps: int) -> int:
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return min(total_steps, int(math.ceil(cfg.warmup_ratio * total_steps)))


def lr_multiplier(step: int, total_steps: int, cfg: ScheduleConfig) -> float:
    """The factor applied to the peak LR for the update made at ``step`` (0-based)."""
    total_steps = max(1, total_steps)
    warmup = warmup_steps_for(cfg, total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    p = min(1.0, (step - warmup) / decay_steps)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.schedule == "linear":
        return floor + (1.0 - floor) * (1.0 - p)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def lr_at(step: int, total_steps: int, cfg: ScheduleConfig, peak_lr: float) -> float:
    return peak_lr * lr_multiplier(step, total_steps, cfg)


def lr_curve(total_steps: int, cfg: ScheduleConfig, peak_lr: float, points: int = 400) -> tuple[list[int], list[float]]:
    """(steps, lrs) sampled for a preview plot."""
    total_steps = max(1, total_steps)
    stride = max(1, total_steps // points)
    steps = list(range(0, total_steps, stride))
    if steps[-1] != total_steps - 1:
        steps.append(total_steps - 1)
    return steps, [lr_at(s, total_steps, cfg, peak_lr) for s in steps]


def build_scheduler(optimizer, total_steps: int, cfg: ScheduleConfig):
    """A torch LambdaLR applying :func:`lr_multiplier` to each param group's own peak LR (layer-wise rates keep their ratios)."""
    from torch.optim.lr_scheduler import LambdaLR

    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))


# -- the run's steps: how many, and which rows each micro-batch reads --------------------------------
@dataclass
class Schedule:
    """How many micro-batches and optimizer steps the run has, and which examples each micro-batch holds.

    With data mixing, f (``mix_fraction``) is a share of the trained tokens: micro-batch i holds g_i general rows
    and B − g_i task rows, g_i chosen so that the running share of general tokens tracks f (general paragraphs are
    often far longer than task rows, so a share of rows would overshoot). Without token counts, the share is one of
    rows: g_i = round(f·B·(i+1)) − round(f·B·i). Task and general rows are read from two endless streams, each a
    sequence of seeded per-epoch shuffles, and the g_i depend on nothing but the data and the seed: any micro-batch
    can be recomputed from its number alone, which is what makes a resumed run continue exactly.
    """
    n_examples: int
    batch_size: int
    grad_accum: int
    seed: int
    total_steps: int
    mix_fraction: float = 0.0
    n_general: int = 0
    task_tokens: tuple[int, ...] | None = field(default=None, repr=False)     # trained tokens of each example
    general_tokens: tuple[int, ...] | None = field(default=None, repr=False)
    lengths: tuple[int, ...] | None = field(default=None, repr=False)         # set: length-grouped batches
    ranks: int = 1   # processes sharing each step (FSDP): an epoch's last step holds at least this many rows
    padding: tuple[int, int] | None = field(default=None, repr=False)  # padded tokens of epoch 0: plain, grouped
    _orders: dict = field(default_factory=dict, repr=False)
    _g_before: list[int] = field(default_factory=lambda: [0], repr=False)     # general rows before micro-batch i
    _tokens_so_far: list[int] = field(default_factory=lambda: [0, 0], repr=False)  # task, general

    @property
    def _by_tokens(self) -> bool:
        return bool(self.mix_fraction and self.n_general and self.task_tokens and self.general_tokens)

    @property
    def row_share(self) -> float:
        """The expected share of general rows: f itself for a share of rows; for a share of tokens, the row
        share whose mean lengths give f of the tokens."""
        if not self._by_tokens:
            return self.mix_fraction
        f = self.mix_fraction
        lt = sum(self.task_tokens) / len(self.task_tokens)
        lg = sum(self.general_tokens) / len(self.general_tokens)
        return min(f * lt / (f * lt + (1 - f) * lg), (self.batch_size - 1) / self.batch_size)

    @property
    def task_rows_per_batch(self) -> float:
        return self.batch_size * (1.0 - self.row_share)

    @property
    def step_rows(self) -> int:
        """Rows of one optimizer step: batch × grad_accum (× ranks: the global schedule's grad_accum)."""
        return self.batch_size * self.grad_accum

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches of one epoch. Without mixing, an epoch is whole steps (its last may hold fewer rows, cut
        over the step's grad_accum micro-batches), so a step never straddles two epochs and reads the same rows
        however it is cut; with mixing, task rows come from an endless stream (``_stream``)."""
        if self.mix_fraction == 0:
            return max(1, math.ceil(self.n_examples / self.step_rows)) * self.grad_accum
        return max(1, math.ceil(self.n_examples / self.task_rows_per_batch))

    @property
    def steps_per_epoch(self) -> float:
        return self.batches_per_epoch / self.grad_accum

    def _general_before(self, micro_batch: int) -> int:
        if not self._by_tokens:
            return round(self.mix_fraction * self.batch_size * micro_batch)
        while len(self._g_before) <= micro_batch:
            self._plan_next()
        return self._g_before[micro_batch]

    def _plan_next(self) -> None:
        """g for the next micro-batch: the general rows (0 … B−1) that keep the running token share nearest f."""
        i, B, f = len(self._g_before) - 1, self.batch_size, self.mix_fraction
        g_used = self._g_before[-1]
        t_used = i * B - g_used
        task = [self.task_tokens[j] for j in self._stream(t_used, B, self.n_examples, self.seed)]
        gen = [self.general_tokens[j] for j in self._stream(g_used, B - 1, self.n_general, self.seed + 7919)]
        tt, gt = self._tokens_so_far

        def miss(g: int) -> float:
            general = gt + sum(gen[:g])
            return abs(general - f * (tt + sum(task[:B - g]) + general))
        g = min(range(B), key=miss)
        self._tokens_so_far = [tt + sum(task[:B - g]), gt + sum(gen[:g])]
        self._g_before.append(g_used + g)

    @staticmethod
    def _stream(start: int, count: int, n: int, seed: int) -> list[int]:
        out: list[int] = []
        epoch, pos = divmod(start, n)
        while len(out) < count:
            perm = _epoch_order(n, seed, epoch)
            take = list(perm[pos:pos + count - len(out)])
            out += take
            epoch, pos = epoch + 1, 0
        return out

    def batch_indices(self, micro_batch: int) -> list[int]:
        """Task example indices of global micro-batch number ``micro_batch``."""
        if self.mix_fraction == 0:
            # Without mixing, a step is rows [s·R, (s+1)·R) of its epoch's order (R = batch × grad_accum) cut
            # into grad_accum micro-batches; the epoch's last step may be short, its rows then spread evenly
            # (sizes differ by one at most) so that each rank of a sharded run gets rows while there are enough.
            epoch, pos = divmod(micro_batch, self.batches_per_epoch)
            step, k = divmod(pos, self.grad_accum)
            order = self.epoch_order(epoch)
            rows = order[step * self.step_rows:(step + 1) * self.step_rows]
            if len(rows) == self.step_rows:
                return list(rows[k * self.batch_size:(k + 1) * self.batch_size])
            if len(rows) < self.ranks:   # every rank needs a row (FSDP's collectives): repeat the epoch's first
                rows = tuple(rows) + tuple(order[:self.ranks - len(rows)])   # rows, as DistributedSampler pads
            q, r = divmod(len(rows), self.grad_accum)
            start = k * q + min(k, r)
            return list(rows[start:start + q + (k < r)])
        g0, g1 = self._general_before(micro_batch), self._general_before(micro_batch + 1)
        t0 = micro_batch * self.batch_size - g0
        return self._stream(t0, self.batch_size - (g1 - g0), self.n_examples, self.seed)

    def epoch_order(self, epoch: int) -> tuple[int, ...]:
        """The task rows of one epoch in reading order (without mixing): the seeded shuffle, or with ``lengths``
        its length-grouped steps (:func:`grouped_order` over batch × grad_accum rows), a function of the seed and
        the epoch alone."""
        if self.lengths is None:
            return _epoch_order(self.n_examples, self.seed, epoch)
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            self._orders[epoch] = grouped_order(_epoch_order(self.n_examples, self.seed, epoch), self.lengths,
                                                self.step_rows, self.seed, epoch)
        return self._orders[epoch]

    def general_indices(self, micro_batch: int) -> list[int]:
        """General-set example indices mixed into micro-batch ``micro_batch`` (empty without mixing)."""
        if self.mix_fraction == 0 or self.n_general == 0:
            return []
        g0, g1 = self._general_before(micro_batch), self._general_before(micro_batch + 1)
        return self._stream(g0, g1 - g0, self.n_general, self.seed + 7919)


@functools.lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded shuffle of one epoch, computed once per epoch (not once per micro-batch: O(n) each time)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


MEGABATCH = 50   # steps per megabatch of length-grouped steps (Hugging Face's group_by_length uses 50 too)


def grouped_order(order, lengths, step_rows: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Length-grouped steps: the epoch's shuffle ``order`` cut into megabatches of MEGABATCH steps, each sorted
    by length (longest first; ties keep the shuffled order) and cut into steps of ``step_rows`` rows (batch ×
    grad_accum, × ranks: as Hugging Face's LengthGroupedSampler groups by batch × accumulation), so that a step
    holds rows of similar length and its micro-batches, consecutive slices of it, pad little; then the steps in a
    seeded shuffle, the one with the longest row first (an out-of-memory shows at the first step, not hours in).
    A short last step stays last. Grouping by step, not by micro-batch, is what makes 4 × 1, 2 × 2 and 1 × 4
    read the same rows in each step, hence make the same update."""
    import torch

    mega = MEGABATCH * step_rows
    steps: list[list[int]] = []
    for start in range(0, len(order), mega):
        part = sorted(order[start:start + mega], key=lambda i: -lengths[i])
        steps += [part[j:j + step_rows] for j in range(0, len(part), step_rows)]
    tail = [steps.pop()] if steps and len(steps[-1]) < step_rows else []
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7_777_777)   # not the rows' own shuffle stream
    steps = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
    if steps:
        longest = max(range(len(steps)), key=lambda b: lengths[steps[b][0]])
        steps[0], steps[longest] = steps[longest], steps[0]
    return tuple(i for b in steps + tail for i in b)


def padded_tokens(order, lengths, batch_size: int) -> int:
    """Pad tokens the collator adds over one epoch read in ``order`` (each batch padded to its longest row)."""
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        total += max(batch) * len(batch) - sum(batch)
    return total


def plan_schedule(cfg: RunConfig, n_examples: int, n_general: int = 0, task_tokens=None, general_tokens=None,
                  lengths=None) -> Schedule:
    """The run's steps. ``task_tokens`` / ``general_tokens``: the trained tokens of each example, which make
    ``mix_fraction`` a share of tokens (without them it is a share of rows). ``lengths``: each example's tokens,
    for length-grouped batches (:func:`row_stats` gives them when ``data.group_by_length`` applies)."""
    if n_examples == 0:
        raise ConfigError("data.dataset", "the training split is empty")
    mix = cfg.regularize.mix_fraction if n_general else 0.0
    s = Schedule(n_examples, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.seed, 0, mix, n_general,
                 tuple(task_tokens) if task_tokens and mix else None,
                 tuple(general_tokens) if general_tokens and mix else None)
    if lengths is not None and not mix and len(lengths) == n_examples:
        s.lengths = tuple(lengths)
        plain = _epoch_order(n_examples, s.seed, 0)
        grouped = [[s.lengths[i] for i in s.batch_indices(b)] for b in range(s.batches_per_epoch)]
        s.padding = (padded_tokens(plain, s.lengths, s.batch_size),
                     sum(max(b) * len(b) - sum(b) for b in grouped if b))
    if cfg.train.max_steps is not None:
        s.total_steps = cfg.train.max_steps
    else:
        s.total_steps = max(1, math.ceil(cfg.train.epochs * s.batches_per_epoch / cfg.train.grad_accum))
    return s


def mix_tokens(task_examples: list, general_examples: list, cfg: RunConfig):
    """(task, general) trained-token counts per example when data mixing is on (what makes mix_fraction a share of
    tokens), else (None, None). Counted as the loss counts them: labels that are not -100, the first one excepted."""
    if not (cfg.regularize.mix_fraction and general_examples and task_examples and "labels" in task_examples[0]):
        return None, None

    def count(ex: dict) -> int:
        return sum(1 for x in ex["labels"][1:] if x != -100)
    return [count(ex) for ex in task_examples], [count(ex) for ex in general_examples]


def row_stats(task_examples: list, general_examples: list, cfg: RunConfig):
    """(task tokens, general tokens, lengths): :func:`mix_tokens`, and each task row's length when its batches
    are length-grouped: ``data.group_by_length`` on, rows padded (packed rows fill seq_len already) and no data
    mixing (a batch's general rows follow the token share)."""
    mixing = bool(cfg.regularize.mix_fraction and general_examples)
    grouped = (cfg.data.group_by_length and not mixing and task_examples
               and "position_ids" not in task_examples[0])
    return (*mix_tokens(task_examples, general_examples, cfg),
            # a preference pair (data/preference.py) is as long as its longer answer
            [max(len(ex["input_ids"]), len(ex.get("rejected_input_ids", ()))) for ex in task_examples]
            if grouped else None)


def schedule_lines(cfg: RunConfig, sched) -> list[tuple[str, str]]:
    """(line, level) for the run's log: :func:`schedule_warning`, and whether batches are length-grouped with the
    padding that saves (counted over epoch 0), or why not."""
    out = [(said, "warning")] if (said := schedule_warning(cfg, sched)) else []
    sched = getattr(sched, "global_schedule", sched)
    if sched.padding is not None:
        plain, grouped = sched.padding
        cut = f", {1 - grouped / plain:.0%} less" if plain else ""
        out.append((f"Length-grouped batches: on (padding per epoch {plain:,} → {grouped:,} tokens{cut}; "
                    "--no-group-by-length for a plain shuffle)", "info"))
    elif cfg.data.group_by_length and sched.mix_fraction:
        out.append(("Length-grouped batches: off (data mixing sets each batch's rows by its token share)", "info"))
    elif cfg.data.group_by_length and cfg.data.packing:
        out.append(("Length-grouped batches: off (packed rows fill seq_len already)", "info"))
    return out


def schedule_warning(cfg: RunConfig, sched: Schedule) -> str | None:
    """One line for what the schedule cannot do as asked (warmup as long as the run, a step larger than the data,
    epochs rounded to whole steps), or None. Several GPUs: on the global schedule (``global_schedule``)."""
    sched = getattr(sched, "global_schedule", sched)
    said = []
    warmup = warmup_steps_for(cfg.schedule, sched.total_steps)
    wanted = cfg.schedule.warmup_steps if cfg.schedule.warmup_steps is not None else None
    if wanted is not None and wanted >= sched.total_steps:
        said.append(f"warmup_steps {wanted} covers the whole run of {sched.total_steps} steps (cut to {warmup}): "
                    "the learning rate never reaches its peak")
    tail = sched.n_examples % sched.step_rows if sched.mix_fraction == 0 else 0
    if 0 < tail < sched.ranks:
        said.append(f"the last step of each epoch holds {tail} row{'s' if tail > 1 else ''} for {sched.ranks} GPUs: "
                    f"it repeats {sched.ranks - tail} of the epoch's first rows so that every GPU has one")
    rows = cfg.train.batch_size * sched.grad_accum
    if rows > sched.n_examples:
        said.append(f"one step wants batch_size × grad_accum × GPUs = {rows} rows but the training split has "
                    f"{sched.n_examples}: every step repeats rows")
    if cfg.train.max_steps is None:
        done = sched.total_steps * sched.grad_accum / sched.batches_per_epoch
        if abs(done - cfg.train.epochs) > 1e-6:
            said.append(f"epochs {cfg.train.epochs:g} rounded to {sched.total_steps} whole steps "
                        f"({done:.3g} epochs)")
    return ("Schedule: " + "; ".join(said)) if said else None
