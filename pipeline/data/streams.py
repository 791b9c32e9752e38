"""What runs inside a loader worker: read units -> shuffle -> skip to the resume point -> decode -> batch.

A rank's epoch is served by ``W`` *logical* workers (``W = max(1, num_workers)``). Logical worker
``w`` yields the rank's batches ``w, w + W, w + 2W, ...`` of the epoch: torch's DataLoader takes
batches from its worker processes round-robin, so the rank's batch order is fixed. When a
loader resumes at step ``s``, DataLoader worker ``i`` plays logical worker ``(s + i) % W``, so the
first batch after resuming is batch ``s``, exactly as in the uninterrupted run.

A logical worker's sample stream is infinite: it reads its units in a seeded order, shuffles
samples in a buffer flushed at the end of each pass (so one pass is exactly its samples once),
then starts another pass in a new order. The loader stops after the epoch's number of steps.

The stream before decoding is a pure function of ``(seed, epoch, rank, world_size, workers)``, so
resuming replays it without decoding: a batch carries its worker's position ``(done, partial)``
(samples finished, views of the next sample already batched), and :func:`skip_samples` drops that
many undecoded samples, plus the shard-error events the skipped part already counted.

**Several sources** (``data.sources``). Each logical worker holds a deal of every source's units
and one :func:`cycle_units` stream per source; :func:`mix_sources` fills each sample slot from a
source drawn by weight with an RNG seeded ``(seed, epoch, rank, worker, "source")``, taking that
source's next sample (its events pass through on the way). The mixed stream is still a pure
function of ``(seed, epoch, rank, world_size, workers)``, so the same ``(done, partial)`` position
resumes it exactly: replaying the draws replays every source's position, no per-source state.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.core.errors import DataError
from pipeline.data.decoding import (
    ClipSpec,
    DataStats,
    SampleError,
    TestViews,
    TrainViews,
    crop_batch,
    seed_of,
    test_views,
    train_views,
)
from pipeline.data.masking import Grid, MaskConfig, make_masks
from pipeline.data.shard_index import RawSample, ShardFault, Unit, read_unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassEnd:
    """Marks the end of one pass of a logical worker over its units (of one source)."""

    pass_index: int
    source: int = 0


Item = RawSample | ShardFault | PassEnd


def buffer_shuffle(items: Iterable[Item], size: int, rng: random.Random) -> Iterator[Item]:
    """WebDataset-style shuffle of samples in a ``size`` buffer; events pass straight through."""
    buf: list[Item] = []
    for item in items:
        if not isinstance(item, RawSample):
            yield item
            continue
        buf.append(item)
        if len(buf) >= max(1, size):
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def cycle_units(units: list[Unit], seed_parts: tuple[object, ...], shuffle_buffer: int, source: int = 0
                ) -> Iterator[Item]:
    """Infinite passes over ``units``; pass ``p``'s unit order and sample order come from seed_parts + p.
    Every item is tagged with ``source`` (the index in ``data.sources``; 0 for a single shard set)."""
    for p in itertools.count():
        order = list(units)
        random.Random(seed_of(*seed_parts, p, "units")).shuffle(order)
        samples = itertools.chain.from_iterable(read_unit(u) for u in order)
        for item in buffer_shuffle(samples, shuffle_buffer, random.Random(seed_of(*seed_parts, p, "samples"))):
            if isinstance(item, RawSample):
                item.pass_index, item.source = p, source
            elif isinstance(item, ShardFault) and source:
                item = dataclasses.replace(item, source=source)
            yield item
        yield PassEnd(p, source)


def mix_sources(sources: Sequence[Iterator[Item] | None], weights: Sequence[float], rng: random.Random
                ) -> Iterator[Item]:
    """One infinite stream from several: each sample slot draws a source by weight (sources that are
    None, i.e. with no units on this worker, are never drawn) and takes that source's next sample;
    the events it meets on the way (shard faults, pass ends) pass through first."""
    live = [i for i, src in enumerate(sources) if src is not None and weights[i] > 0]
    if not live:  # no units of any source: as cycle_units([]) would (pass ends only)
        yield from cycle_units([], (), 1)
        return
    cum = list(itertools.accumulate(float(weights[i]) for i in live))
    while True:
        pick = live[min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(live) - 1)]
        for item in sources[pick]:  # type: ignore[union-attr]
            yield item
            if isinstance(item, RawSample):
                break


def skip_samples(items: Iterable[Item], done: int, partial: int) -> Iterator[tuple[Item, int]]:
    """Drop the first ``done`` samples and the events among them; yield ``(item, views_to_drop)``.

    With ``partial > 0`` the next sample had ``partial`` views batched before the checkpoint: it
    is yielded with that count, and events before it are dropped too (they were counted then).
    """
    skipped = 0
    for item in items:
        if skipped < done:
            skipped += isinstance(item, RawSample)
            continue
        if partial:
            if isinstance(item, RawSample):
                yield item, partial
                partial = 0
            continue
        yield item, 0


@dataclass
class TrainPlan:
    """Everything a worker needs for one epoch of one rank (pickled into each worker process)."""

    units: list[list[Unit]]  # per logical worker of this rank (with sources: all its sources' units)
    spec: ClipSpec
    seed: int
    epoch: int
    rank: int
    batch_size: int
    shuffle_buffer: int
    start_step: int = 0
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    mask: MaskConfig | None = None
    grid: Grid | None = None
    require_labels: bool = False
    min_samples: int = 20
    # data.sources: per logical worker, its units of each source; the sources' weights and short names
    sources: list[list[list[Unit]]] = field(default_factory=list)
    source_weights: tuple[float, ...] = ()
    source_names: tuple[str, ...] = ()
    # supervised data.sources: per source, the merged label id of each of its label ids (empty: as stored)
    label_maps: tuple[tuple[int, ...], ...] = ()
    exclude: dict[int, frozenset[str]] = field(default_factory=dict)  # keys left out, per source


class _Batcher:
    """Collects views into batches; counts what went wrong since the last batch."""

    def __init__(self, plan: TrainPlan, worker: int, first_batch: int) -> None:
        self.plan, self.worker, self.index = plan, worker, first_batch
        self.pending: list[tuple[TrainViews, int]] = []
        self.stats = DataStats()  # since the last batch: what the batch carries
        self.total = DataStats()  # this worker's whole epoch: the no-progress guard
        # per source (0 for a single shard set): samples used / lost in its current pass, and
        # whether that pass began before the resume point (its earlier part was not replayed here)
        self.pass_ok: Counter[int] = Counter()
        self.pass_bad: Counter[int] = Counter()
        self.resumed_pass: dict[int, bool] = {}
        self.resumed = bool(first_batch)
        self.source_ok: Counter[int] = Counter()  # with data.sources: this worker's epoch, per source
        self.source_bad: Counter[int] = Counter()

    def error(self, what: str, reason: str, lost: int = 1, shard: bool = False, source: int = 0) -> None:
        log.warning("data error: %s: %s", what, reason)
        for s in (self.stats, self.total):
            if shard:
                s.shard_errors += 1
                s.samples_lost += lost
            else:
                s.decode_errors += 1
            s.reasons.append(f"{what}: {reason}")
        self.pass_bad[source] += lost
        self.source_bad[source] += lost
        if self.total.samples_ok == 0 and self.total.errors >= self.plan.min_samples:
            raise DataError(f"every sample failed ({self.total.errors} of {self.total.seen}); last: {what}: {reason}")
        # a source drawn rarely may not end a pass in an epoch: its own guard, as the one above
        if self.plan.source_names and self.source_ok[source] == 0 and self.source_bad[source] >= self.plan.min_samples:
            raise DataError(f"every sample of data.sources source {self.plan.source_names[source]!r} failed "
                            f"({self.source_bad[source]}); last: {what}: {reason}")

    def ok(self, counted: bool = False, source: int = 0, name: str = "") -> None:
        if not counted:
            for s in (self.stats, self.total):
                s.samples_ok += 1
                if name:
                    s.by_source[name] = s.by_source.get(name, 0) + 1
        self.pass_ok[source] += 1
        self.source_ok[source] += 1

    def end_pass(self, units: list[Unit], source: int = 0) -> None:
        if self.pass_ok[source] == 0 and self.pass_bad[source] and not self.resumed_pass.get(source, self.resumed):
            names = ", ".join(u.name for u in units[:4]) + (" ..." if len(units) > 4 else "")
            raise DataError(f"no sample of shards {names} could be used; last: {'; '.join(list(self.total.reasons)[-2:])}")
        self.pass_ok[source] = self.pass_bad[source] = 0
        self.resumed_pass[source] = False

    def batch(self, position: tuple[int, int]) -> dict[str, Any]:
        """Collate the pending views: uint8 video ``[B, T, H, W, C]``, masks ``[B, N]``, labels ``[B]``.

        The video stays uint8 (1 byte per value through shared memory, not 4) and channels last,
        as decoded: the training process normalises it into ``[B, C, T, H, W]`` on its device
        (:func:`pipeline.train.batch.model_input`).
        """
        plan, views = self.plan, self.pending
        if plan.spec.crop_on == "device":  # each clip once + a box per view: resized on the training device
            out: dict[str, Any] = crop_batch(views)
        else:
            video = torch.empty(len(views), *views[0][0].view_shape, dtype=torch.uint8)
            for slot, (tv, v) in zip(video, views):  # resized straight into its slot (or one contiguous copy)
                tv.write(v, slot)
            out = {"video": video}
        out.update({
            "keys": [tv.key for tv, _ in views],
            "label": torch.tensor([tv.label for tv, _ in views], dtype=torch.long),
            "frame_indices": torch.stack([tv.frames for tv, _ in views]),
        })
        if plan.mask is not None and plan.grid is not None:
            step = self.worker + len(plan.units) * self.index  # this batch's step within the epoch
            g = torch.Generator().manual_seed(seed_of(plan.seed, plan.epoch, plan.rank, step, "mask"))
            out["enc_mask"], out["dec_mask"] = make_masks(plan.mask, len(views), plan.grid, g)
        out["stats"] = self.stats.to_dict()
        out["_position"] = (self.worker, *position)
        self.pending, self.stats, self.index = [], DataStats(), self.index + 1
        return out


def merged_label(views: TrainViews, label_map: tuple[int, ...]) -> TrainViews | SampleError:
    """``views`` with its source's label id mapped into the merged label space."""
    if 0 <= views.label < len(label_map):
        return dataclasses.replace(views, label=label_map[views.label])
    return SampleError(views.key, f"label id {views.label} is not one of its index's {len(label_map)} labels")


def train_batches(plan: TrainPlan, worker: int) -> Iterator[dict[str, Any]]:
    """Logical ``worker``'s batches of the epoch, from ``plan.start_step`` on (infinite)."""
    workers, k, size = len(plan.units), plan.spec.views, plan.batch_size
    before = len(range(worker, plan.start_step, workers))  # batches it yielded before start_step
    # Without a recorded position (other layout), assume no errors in the skipped part.
    done, partial = plan.positions.get(worker) or divmod(before * size, k)
    if plan.sources:  # several shard sets, mixed by weight (module docstring)
        units_of = plan.sources[worker]
        mixer = random.Random(seed_of(plan.seed, plan.epoch, plan.rank, worker, "source"))
        stream = mix_sources([cycle_units(units, (plan.seed, plan.epoch, plan.rank, worker, s), plan.shuffle_buffer, s)
                              if units else None for s, units in enumerate(units_of)], plan.source_weights, mixer)
    else:
        units_of = [plan.units[worker]]
        stream = cycle_units(units_of[0], (plan.seed, plan.epoch, plan.rank, worker), plan.shuffle_buffer)
    names = plan.source_names
    b = _Batcher(plan, worker, before)
    for item, drop in skip_samples(stream, done, partial):
        if isinstance(item, PassEnd):
            b.end_pass(units_of[item.source], item.source)
            continue
        if isinstance(item, ShardFault):
            b.error(f"shard {item.shard}", item.reason, lost=item.lost, shard=True, source=item.source)
            continue
        if plan.exclude and item.key in plan.exclude.get(item.source, ()):
            done += 1  # left out by the driver (listed in the run folder with its reason): neither used nor lost
            continue
        views = train_views(item, plan.spec, plan.seed, plan.epoch, plan.require_labels)
        if plan.label_maps and not isinstance(views, SampleError):
            views = merged_label(views, plan.label_maps[item.source])
        if isinstance(views, SampleError):
            b.error(f"sample {views.key} in {item.shard}", views.reason, source=item.source)
            done += 1
            continue
        # a partly batched sample was counted before the checkpoint
        b.ok(counted=bool(drop), source=item.source, name=names[item.source] if names else "")
        for v in range(drop, k):
            b.pending.append((views, v))
            if len(b.pending) == size:
                finished = v + 1 == k
                yield b.batch((done + finished, 0 if finished else v + 1))
        done += 1


class TrainStream(IterableDataset):
    """One epoch of one rank as an IterableDataset of ready batches (``DataLoader(batch_size=None)``)."""

    def __init__(self, plan: TrainPlan) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = ((info.id if info else 0) + self.plan.start_step) % len(self.plan.units)
        return train_batches(self.plan, worker)


@dataclass
class EvalPlan:
    """One rank's evaluation pass: units per DataLoader worker, each sample read once."""

    units: list[list[Unit]]
    spec: ClipSpec
    batch_size: int
    require_labels: bool = True


def _eval_batch(views: list[TestViews], stats: DataStats) -> dict[str, Any]:
    return {"video": torch.stack([tv.video for tv in views]), "label": torch.tensor([tv.label for tv in views]),
            "keys": [tv.key for tv in views], "stats": stats.to_dict()}


class EvalStream(IterableDataset):
    """Batches ``{video uint8 [B, V, T, H, W, C], label [B], keys, stats}``; V = clips x crops; last one may be short."""

    def __init__(self, plan: EvalPlan) -> None:
        self.plan = plan

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        plan, stats, pending = self.plan, DataStats(), []
        for unit in plan.units[info.id if info else 0]:
            for item in read_unit(unit):
                out = item if isinstance(item, ShardFault) else test_views(item, plan.spec, plan.require_labels)
                if isinstance(out, TestViews):
                    stats.samples_ok += 1
                    pending.append(out)
                else:
                    what = f"shard {out.shard}" if isinstance(out, ShardFault) else f"sample {out.key}"
                    log.warning("data error: %s: %s", what, out.reason)
                    stats.shard_errors += isinstance(out, ShardFault)
                    stats.samples_lost += out.lost if isinstance(out, ShardFault) else 0
                    stats.decode_errors += isinstance(out, SampleError)
                    stats.reasons.append(f"{what}: {out.reason}")
                if len(pending) == plan.batch_size:
                    yield _eval_batch(pending, stats)
                    pending, stats = [], DataStats()
        if pending or stats.seen:
            yield _eval_batch(pending, stats) if pending else {"video": None, "label": None, "keys": [], "stats": stats.to_dict()}
