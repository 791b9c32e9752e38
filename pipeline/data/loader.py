"""Training and evaluation data loaders over WebDataset shards (local or ``s3://``).

Pre-training (:func:`pretrain_loader`), per rank::

    index.json -> shards of the split -> units, dealt to world_size x W readers by sample count
    (order shuffled with (seed, epoch)) -> this rank's W readers (DataLoader workers) -> read tar
    -> shuffle buffer -> decode mp4 once -> T frames at stride s -> k views, each its own
    multi-scale crop -> batch of ``batch_size`` views + tube / running-cell masks (in the worker)

Batches: ``{"video": uint8 [B, T, H, W, C] (channels last, as decoded), "enc_mask": bool [B, N], "dec_mask": bool [B, N],
"keys": [B] str, "label": long [B] (-1 = unlabelled), "frame_indices": long [B, T],
"stats": counts since the worker's previous batch}``.

**uint8 hand-off.** Workers ship the uint8 crops, not normalised float32: a 16x224 clip is 2.4 MB
through ``/dev/shm`` instead of 9.6 MB, and in the layout the decoder and the resize leave them
(``[T, H, W, C]``), so collating is a plain copy; the device transposes them while it normalises.
With CUDA present the batches come in pinned memory, so
:func:`pipeline.train.batch.model_input` copies them ``non_blocking`` and normalises (and mixes)
on the training device. ``jobs.plan --shm`` states what the shipped configs keep in flight.

**Crops on the device** (``data.crop_on = "device"``, the multi-scale crop only). Instead of
``"video"`` a batch holds ``"clips"`` (each decoded clip once, uint8 ``[N, T, H, W, C]``) and
``"boxes"`` (long ``[B, 6]``: clip, y, x, h, w, flip per view):
:func:`pipeline.train.batch.batch_video` cuts and resizes the views on the training device, so the
loader's core does no resize (what keeps it above the raw decode rate at 4 views) and a clip
travels once, not as k resized copies.

**Equal steps.** Every rank yields exactly ``steps_per_epoch = samples * repeated_aug //
(batch_size * world_size)`` batches per epoch (unequal counts hang collectives). Readers are
balanced by sample count; a reader whose share is smaller than its batches need starts another
pass over its shards (new order, new crops), one with a larger share leaves its last samples for
later epochs (the deal changes every epoch). Over an epoch every sample is used about
``repeated_aug`` times; exactly that when shards divide evenly.

**Resume.** The batch sequence of an epoch is a pure function of ``(seed, epoch, rank,
world_size, num_workers)``. :meth:`TrainLoader.state_dict` holds the epoch, the step within it
and each reader's sample position; a loader given that state yields exactly the batches the
uninterrupted one would have yielded next, skipping the consumed samples *before* decoding (the
tar bytes are re-read, no video is decoded). Under a different world size / worker count /
batch shape the step is carried over by clips consumed (samples may repeat within that epoch).

**Errors.** Undecodable videos, samples with missing or damaged members and broken shards (open
failure, bad tar, fewer samples than the index states) are logged with the key and reason,
counted and skipped; never replaced by another sample. Each batch carries the counts since its
worker's previous batch; :attr:`TrainLoader.stats` sums them for the rank (the trainer can
all-reduce them). Past ``max_decode_error_fraction`` of the samples seen (after
``error_check_after`` samples), or when nothing decodes at all, a DataError stops the run.

**Several sources** (``data.sources``, VideoMAE V2's UnlabeledHybrid). Shard sets with sampling
weights (``data.source_weights``; by default each source's sample count) replace ``data.shards``,
each read at ``data.split``. An epoch is the sum of their samples; every reader gets a deal of each
source's units and draws, per sample slot, a source by weight (:func:`~pipeline.data.streams.mix_sources`).
The mix is seeded like the rest, so resume stays exact with the same state; the ok samples per
source are counted (``stats.by_source``, keyed by :attr:`TrainLoader.source_names`). In supervised
training the sources are labelled hybrids (VideoMAE V2's K710): their label spaces are merged by
class name and each sample's label mapped into the merged one (:mod:`pipeline.data.hybrid`).

**Samples left out** (``exclude``: keys per source, found once by the job's driver: videos the
target holds out for validation or test, repeats across sources) are skipped by the readers and
not counted in the epoch; the driver lists each with its reason in the run folder.

WebDataset's ``WebLoader.with_epoch`` is not used: this wrapper must also know which worker
produced each batch and where it stood, for exact resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, IterableDataset

from pipeline.core.config import help_field
from pipeline.core.errors import DataError
from pipeline.data.decoding import ClipSpec, DataStats, seed_of
from pipeline.data.hybrid import merge_labels
from pipeline.data.masking import Grid, MaskConfig
from pipeline.data.shard_index import ShardIndex, Unit, assign_units, plan_units
from pipeline.data.streams import EvalPlan, EvalStream, TrainPlan, TrainStream
from pipeline.video.augment import OFFICIAL_RAND_AUGMENT, FinetuneTransform, parse_rand_augment
from pipeline.video.transforms import MULTISCALE_SCALES, TestTransform, TrainTransform

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """What every loader reads (TOML section ``[data]``); the clip size follows ``[model]``.

    Jobs use the subclass with exactly their keys: :class:`TrainDataConfig` (pre-training),
    :class:`EvalDataConfig` (evaluation, extraction), :class:`FinetuneDataConfig` (both: training
    views, and the evaluation recipe its model card records).
    """

    shards: str = help_field("", help="shard folder or s3:// prefix holding index.json (written by jobs.shard)")
    split: str = help_field("train", help="split of the shard index to read ('unlabelled+train' = several)")
    num_frames: int = help_field(16, help="frames per clip (T)", derived="model.num_frames")
    sampling_rate: int = help_field(4, help="stride between sampled frames (4 for Kinetics, 2 for SSv2)")
    input_size: int = help_field(224, help="side of the square crop fed to the model", derived="model.img_size")
    batch_size: int = help_field(8, help="clips (views) per batch per rank; videos per batch for evaluation")
    num_workers: int = help_field(2, help="loader worker processes per rank (0 = decode in the training process)")
    prefetch_factor: int = help_field(2, help="batches each worker prepares ahead")
    worker_start: Literal["forkserver", "fork", "spawn"] = help_field(
        "forkserver", help="how loader workers start: forkserver (forked from a single-threaded server process; "
                           "fork from a Ray worker's many threads can deadlock the child on Python <= 3.11, "
                           "CPython gh-112275), fork, or spawn")
    seed: int = help_field(0, help="data order and augmentation seed")
    max_decode_error_fraction: float = help_field(0.05, help="stop when this fraction of samples seen fails")
    error_check_after: int = help_field(20, help="samples seen before the error fraction is checked")
    decode_backend: Literal["auto", "decord", "pyav"] = help_field("auto", help="video decoder")
    decode_threads: int = help_field(1, help="decoder threads per worker (0 = decoder's choice)")

    def __post_init__(self) -> None:
        for name in ("num_frames", "sampling_rate", "input_size", "batch_size", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_decode_error_fraction <= 1.0:
            raise ValueError(f"data.max_decode_error_fraction must be in [0, 1], got {self.max_decode_error_fraction}")

    @property
    def readers_per_rank(self) -> int:
        """Logical readers per rank: one per worker process (one in-process reader with 0 workers)."""
        return max(1, self.num_workers)

    def train_views(self) -> tuple[TrainTransform, int]:
        """The training crop and the views cut per decoded video (a plain centre-scale crop here)."""
        return TrainTransform(size=self.input_size, scales=(1.0,), flip=False), 1

    def test_views(self) -> tuple[TestTransform, int]:
        """The test crops and the temporal clips per video (one centre crop of one clip here)."""
        return TestTransform(size=self.input_size, short_side=self.input_size, num_crops=1), 1

    def clip_spec(self) -> ClipSpec:
        train, views = self.train_views()
        test, test_clips = self.test_views()
        return ClipSpec(num_frames=self.num_frames, stride=self.sampling_rate, views=views, train=train, test=test,
                        test_clips=test_clips, backend=self.decode_backend, threads=self.decode_threads)


@dataclass
class TrainDataConfig(DataConfig):
    """Training data: + the augmentation and the views per decoded video (``[data]``)."""

    scales: tuple[float, ...] = help_field(MULTISCALE_SCALES, help="multi-scale crop scales of the short side")
    flip: bool = help_field(False, help="random horizontal flip (VideoMAE pre-training: off)")
    repeated_aug: int = help_field(4, help="views (clips) cut from each decoded video (VideoMAE V2: 4)")
    shuffle_buffer: int = help_field(64, help="undecoded samples per worker shuffled together")
    sources: tuple[str, ...] = help_field((), help="several shard sets (folders or s3:// prefixes, each read at "
                                                   "data.split) replacing data.shards; supervised: labelled, their "
                                                   "label spaces merged by class name")
    crop_on: Literal["loader", "device"] = help_field(
        "loader", help="where a decoded clip's multi-scale crops are resized: loader (its CPU core, into the batch) "
                       "or device (the batch ships each clip once with its views' boxes; the training device cuts "
                       "and resizes them: no resize on the loader's cores, fewer bytes at 4 views; multiscale crop only)")
    source_weights: tuple[float, ...] = help_field((), help="sampling weight of each of data.sources (> 0; "
                                                            "empty = proportional to each source's samples)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repeated_aug < 1:
            raise ValueError(f"data.repeated_aug must be >= 1, got {self.repeated_aug}")
        self.sources, self.source_weights = tuple(self.sources), tuple(self.source_weights)
        if any(not str(src).strip() for src in self.sources):
            raise ValueError(f"data.sources must name shard folders or s3:// prefixes, got an empty one in "
                             f"{list(self.sources)}")
        twice = sorted({src for src in self.sources if self.sources.count(src) > 1})
        if twice:
            raise ValueError(f"data.sources lists {twice[0]!r} more than once: give it once, with a larger "
                             "data.source_weights entry to sample it more")
        if self.source_weights and len(self.source_weights) != len(self.sources):
            raise ValueError(f"data.source_weights has {len(self.source_weights)} weights for "
                             f"{len(self.sources)} data.sources: give one per source, or none (by sample count)")
        bad = [w for w in self.source_weights if not (math.isfinite(w) and w > 0)]
        if bad:
            raise ValueError(f"data.source_weights must all be > 0 (and finite), got {bad[0]}")

    def train_views(self) -> tuple[TrainTransform, int]:
        return TrainTransform(size=self.input_size, scales=tuple(self.scales), flip=self.flip), self.repeated_aug

    def clip_spec(self) -> ClipSpec:
        return dataclasses.replace(super().clip_spec(), crop_on=self.crop_on)


@dataclass
class EvalDataConfig(DataConfig):
    """Evaluation data: + the test views per video (``[data]``)."""

    test_num_clips: int = help_field(5, help="evaluation: temporal clips per video")
    test_num_crops: int = help_field(3, help="evaluation: spatial crops per clip")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_num_clips < 1 or self.test_num_crops < 1:
            raise ValueError(f"data.test_num_clips and data.test_num_crops must be >= 1, "
                             f"got {self.test_num_clips} and {self.test_num_crops}")

    def test_views(self) -> tuple[TestTransform, int]:
        return (TestTransform(size=self.input_size, short_side=self.input_size, num_crops=self.test_num_crops),
                self.test_num_clips)


@dataclass
class FinetuneDataConfig(TrainDataConfig, EvalDataConfig):
    """Fine-tuning data: training views, and the test views validation and the model card use.

    ``augment = "official"`` is VideoMAE V2's fine-tuning augmentation
    (:class:`~pipeline.video.augment.FinetuneTransform`: RandAugment, random resized crop, ``flip``,
    random erasing); ``"multiscale"`` is the pre-training crop (``scales``, ``flip``). Validation
    and evaluation views are never augmented.
    """

    augment: Literal["official", "multiscale"] = help_field(
        "official", help="training views: official = VideoMAE V2 fine-tuning (RandAugment + random resized crop + "
                         "flip + random erasing); multiscale = the pre-training crop (data.scales)")
    auto_augment: str = help_field(OFFICIAL_RAND_AUGMENT, help="augment=official: RandAugment policy, applied "
                                                                "alike to every frame of a clip ('' = none)")
    crop_scale: tuple[float, float] = help_field((0.08, 1.0), help="augment=official: area range of the random "
                                                                    "resized crop (aspect 3/4-4/3)")
    erase_prob: float = help_field(0.25, help="augment=official: random erasing probability per clip (0 = none)")
    frame_sampling: Literal["official", "stride"] = help_field(
        "official", help="training frames: official = VideoMAE V2's window of num_frames x sampling_rate "
                         "(last frame repeated in shorter videos); stride = the pre-training sampler")

    exclude_shards: tuple[str, ...] = help_field(
        (), help="shard sets whose held-out videos (data.exclude_splits) are never trained on, matched by the "
                 "source video's sha256 (e.g. the target's shards, when post-pre-training on data.sources)")
    exclude_splits: str = help_field("val+test", help="the splits of data.exclude_shards held out ('+'-joined)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.exclude_shards = tuple(self.exclude_shards)
        if any(not str(src).strip() for src in self.exclude_shards):
            raise ValueError(f"data.exclude_shards must name shard folders or s3:// prefixes, got an empty one in "
                             f"{list(self.exclude_shards)}")
        if self.exclude_shards and not [s for s in self.exclude_splits.split("+") if s.strip()]:
            raise ValueError("data.exclude_splits is empty: name the held-out splits of data.exclude_shards (val+test)")
        if self.crop_on == "device" and self.augment != "multiscale":
            raise ValueError(f"data.crop_on='device' resizes the multi-scale crop on the training device; "
                             f"data.augment={self.augment!r} augments on the loader: set data.augment='multiscale' "
                             "or data.crop_on='loader'")
        if self.auto_augment:
            parse_rand_augment(self.auto_augment)  # ValueError names the bad part
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"data.crop_scale must be 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"data.erase_prob must be in [0, 1], got {self.erase_prob}")

    def train_views(self) -> tuple[TrainTransform | FinetuneTransform, int]:  # type: ignore[override]
        if self.augment == "multiscale":
            return super().train_views()
        return (FinetuneTransform(size=self.input_size, auto_augment=self.auto_augment,
                                  scale=(float(self.crop_scale[0]), float(self.crop_scale[1])), flip=self.flip,
                                  erase_prob=self.erase_prob), self.repeated_aug)

    def clip_spec(self) -> ClipSpec:
        return dataclasses.replace(super().clip_spec(), sampling=self.frame_sampling)


def source_names(sources: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Short MLflow-safe names of ``data.sources``: each folder's last part (``s3://b/k400/`` ->
    ``k400``), characters outside ``[A-Za-z0-9_.-]`` as ``_``; a repeated name gets ``_2``, ``_3``, ..."""
    out: list[str] = []
    for src in sources:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", str(src).rstrip("/").rsplit("/", 1)[-1]) or "source"
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return tuple(out)


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")


def _unwrap(exc: DataError) -> DataError:
    """A DataError re-raised by torch from a worker carries the worker's traceback: keep one line."""
    text = str(exc)
    marker = "DataError: "
    return DataError(text[text.rindex(marker) + len(marker):].strip() if marker in text else text)


# What a forkserver preloads, so that each worker forked from it starts with torch and the loader imported.
FORKSERVER_PRELOAD = ["torch", "pipeline.data.streams"]


def worker_context(start: str) -> Any:
    """The multiprocessing context loader workers start from (``data.worker_start``).

    Forking the training process itself (``fork``) copies a process that runs many threads (Ray's,
    MLflow's, the DataLoader's own); on CPython <= 3.11 a child forked while another thread held
    the interpreter's runtime lock deadlocks in ``PyOS_AfterFork_Child`` (gh-112275, fixed in 3.12):
    seen here as a validation loader that never yielded, its worker asleep on a futex. A forkserver
    forks from a single-threaded server that has imported torch and the loader once
    (:data:`FORKSERVER_PRELOAD`), so workers start about as fast as forked ones, and safely.
    """
    ctx = multiprocessing.get_context(start)
    if start == "forkserver":
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD)  # read when the server starts (once per process)
    return ctx


def data_loader(dataset: IterableDataset, cfg: DataConfig) -> DataLoader:
    """torch's DataLoader over ready batches; pinned memory exactly when CUDA is present; workers
    started by :func:`worker_context`.

    Pinned (page-locked) batches let the copy to the GPU run ``non_blocking``; without CUDA
    there is nothing to copy to, and pinning would only cost a copy per batch.
    """
    extra: dict[str, Any] = {}
    if cfg.num_workers:
        extra = {"prefetch_factor": cfg.prefetch_factor, "multiprocessing_context": worker_context(cfg.worker_start)}
    return DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers,
                      pin_memory=torch.cuda.is_available(), **extra)


def _batches(dataset: IterableDataset, cfg: DataConfig) -> Iterator[dict[str, Any]]:
    it = iter(data_loader(dataset, cfg))
    try:
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except DataError as exc:
                error = _unwrap(exc)
            else:
                yield batch
                continue
            # raised outside the except block: the worker's exception (whose traceback holds the
            # DataLoader iterator and so its processes) must not stay chained to ours
            raise error
    finally:
        # Stop the workers now (their streams are infinite) rather than whenever `it` is collected.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def require_global_batch(cfg: TrainDataConfig, num_samples: int, world_size: int, where: str) -> None:
    """DataError (one line, naming the keys) unless ``data.split`` of ``where`` holds one global batch:
    an epoch is ``samples x data.repeated_aug // (data.batch_size x ranks)`` steps, at least one.
    The launchers check it on the driver (``scaling.num_workers`` ranks) before Ray starts."""
    clips, step = num_samples * cfg.repeated_aug, cfg.batch_size * world_size
    if clips < step:
        views = f" x data.repeated_aug={cfg.repeated_aug} views = {clips} clips" if cfg.repeated_aug > 1 else ""
        raise DataError(f"data.batch_size={cfg.batch_size} x scaling.num_workers={world_size} = {step} clips per step, "
                        f"but split {cfg.split!r} of {where} has {num_samples} samples{views}: lower data.batch_size "
                        "or scaling.num_workers, or add data")


class TrainLoader:
    """Equal-length, resumable epochs of training batches for one rank (see the module docstring).

    ``for batch in loader`` runs the rest of the current epoch; ``loader.forever()`` crosses
    epochs. ``epoch`` / ``step`` say where the next batch comes from.
    """

    def __init__(self, cfg: TrainDataConfig, rank: int = 0, world_size: int = 1, *, mask: MaskConfig | None = None,
                 grid: Grid | None = None, require_labels: bool = False, index: ShardIndex | None = None,
                 exclude: Mapping[int, frozenset[str]] | None = None) -> None:
        _check_rank(rank, world_size)
        if (mask is None) != (grid is None):
            raise ValueError("give both mask and grid (pre-training) or neither (supervised)")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.mask, self.grid, self.require_labels = mask, grid, require_labels
        sources = tuple(getattr(cfg, "sources", ()))
        # One entry per source; a single shard set (data.shards) is the one source of the old layout.
        self.indexes = [ShardIndex.load(src) for src in sources] if sources else [index or ShardIndex.load(cfg.shards)]
        self.index = self.indexes[0]
        if require_labels:
            for ix in self.indexes:
                if not ix.labels:
                    raise DataError(f"shards have no labels: {ix.uri}/index.json lists none "
                                    "(shard a manifest with a label column for supervised training)")
        # Supervised training on several sources: one label space, merged by class name (pipeline.data.hybrid).
        self.label_space = merge_labels([ix.labels for ix in self.indexes]) if sources and require_labels else None
        # Samples the driver found to leave out (held-out videos of the target, repeats), per source.
        self.exclude = {s: frozenset(keys) for s, keys in (exclude or {}).items() if keys}
        splits = [ix.split(cfg.split) for ix in self.indexes]
        self.source_samples = [sum(s.samples for s in shards) - len(self.exclude.get(i, ()))
                               for i, shards in enumerate(splits)]
        self.num_samples = sum(self.source_samples)
        where = self.index.uri if not sources else f"data.sources ({', '.join(ix.uri for ix in self.indexes)})"
        require_global_batch(cfg, self.num_samples, world_size, where)
        self.steps_per_epoch = self.num_samples * cfg.repeated_aug // (cfg.batch_size * world_size)
        readers = world_size * cfg.readers_per_rank
        self._source_units = [plan_units(shards, readers) for shards in splits]
        self._units = self._source_units[0]
        self.sources = sources
        self.source_names = source_names(sources) if sources else ()
        weights = tuple(getattr(cfg, "source_weights", ())) or tuple(float(n) for n in self.source_samples)
        self.source_weights = weights if sources else ()
        self._spec = cfg.clip_spec()
        self.seed, self.epoch, self.step = cfg.seed, 0, 0
        self._positions: dict[int, tuple[int, int]] = {}
        self.stats = DataStats()

    def __len__(self) -> int:
        return self.steps_per_epoch

    def readers(self, epoch: int) -> list[list[Unit]]:
        """This rank's units per logical reader in ``epoch`` (the same deal on every rank); with
        ``data.sources``, every source's units of each reader together (see :meth:`source_readers`)."""
        if self.sources:
            return [[u for units in per_source for u in units] for per_source in self.source_readers(epoch)]
        parts = self.world_size * self.cfg.readers_per_rank
        deal = assign_units(self._units, parts, random.Random(seed_of(self.seed, epoch, "deal")))
        return deal[self.rank * self.cfg.readers_per_rank : (self.rank + 1) * self.cfg.readers_per_rank]

    def source_readers(self, epoch: int) -> list[list[list[Unit]]]:
        """With ``data.sources``: this rank's units per logical reader, per source, in ``epoch``: each
        source is dealt on its own (balanced by sample count), seeded with its index."""
        parts, per_rank = self.world_size * self.cfg.readers_per_rank, self.cfg.readers_per_rank
        deals = [assign_units(units, parts, random.Random(seed_of(self.seed, epoch, "deal", s)))
                 for s, units in enumerate(self._source_units)]
        return [[deal[self.rank * per_rank + w] for deal in deals] for w in range(per_rank)]

    def _plan(self) -> TrainPlan:
        per_source = self.source_readers(self.epoch) if self.sources else []
        units = ([[u for units in reader for u in units] for reader in per_source] if self.sources
                 else self.readers(self.epoch))
        return TrainPlan(
            units=units, spec=self._spec, seed=self.seed, epoch=self.epoch, rank=self.rank,
            batch_size=self.cfg.batch_size, shuffle_buffer=self.cfg.shuffle_buffer, start_step=self.step,
            positions=dict(self._positions), mask=self.mask, grid=self.grid, require_labels=self.require_labels,
            min_samples=self.cfg.error_check_after, sources=per_source, source_weights=self.source_weights,
            source_names=self.source_names, label_maps=self.label_space.maps if self.label_space else (),
            exclude=self.exclude,
        )

    def _next_epoch(self) -> None:
        self.epoch, self.step, self._positions = self.epoch + 1, 0, {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.step >= self.steps_per_epoch:
            self._next_epoch()
        batches = _batches(TrainStream(self._plan()), self.cfg)
        try:
            while self.step < self.steps_per_epoch:
                batch = next(batches)
                worker, done, partial = batch.pop("_position")
                self._positions[worker] = (done, partial)
                self.step += 1
                self.stats.add(batch["stats"])
                self.stats.check(self.cfg.max_decode_error_fraction, self.cfg.error_check_after)
                yield batch
        finally:
            batches.close()
        self._next_epoch()

    def forever(self) -> Iterator[dict[str, Any]]:
        """Batches across epochs, without end."""
        while True:
            yield from self

    def _layout(self) -> dict[str, int]:
        return {"world_size": self.world_size, "num_workers": self.cfg.readers_per_rank,
                "batch_size": self.cfg.batch_size, "repeated_aug": self.cfg.repeated_aug}

    def _mix(self) -> dict[str, Any]:
        """With ``data.sources``: what the positions also depend on (the sources and their weights)."""
        return {"sources": list(self.sources), "source_weights": list(self.source_weights)} if self.sources else {}

    def state_dict(self) -> dict[str, Any]:
        """The data position (plain ints and lists: JSON- and torch.save-able). With ``data.sources``
        no per-source position is needed: the mixed stream replays from the reader positions."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, **self._layout(), **self._mix(),
                "positions": [[w, d, p] for w, (d, p) in sorted(self._positions.items())],
                "stats": self.stats.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the one the saved run would have yielded next."""
        if int(state["seed"]) != self.seed:
            log.warning("data seed %s from the checkpoint replaces data.seed %s", state["seed"], self.seed)
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self.stats = DataStats()
        self.stats.add(state.get("stats", {}))
        old = {k: int(state.get(k, 0)) for k in self._layout()}
        old_mix = {"sources": list(state.get("sources", [])), "source_weights": [float(w) for w in state.get(
            "source_weights", [])]} if state.get("sources") else {}
        if old_mix != self._mix():  # other sources or weights: the readers' streams are other streams
            log.warning("data.sources / data.source_weights changed (%s -> %s)", old_mix or "data.shards",
                        self._mix() or "data.shards")
        elif old == self._layout():
            self.step = int(state["step"])
            self._positions = {int(w): (int(d), int(p)) for w, d, p in state.get("positions", [])}
            return
        # Another layout deals other samples to each reader: carry the position over by clips consumed.
        clips = int(state["step"]) * old["batch_size"] * old["world_size"]
        self.step = min(clips // (self.cfg.batch_size * self.world_size), self.steps_per_epoch)
        self._positions = {}
        log.warning("data layout changed (%s -> %s): resuming epoch %d at step %d by clips consumed; "
                    "samples of this epoch may repeat or be skipped", old, self._layout(), self.epoch, self.step)


class EvalLoader:
    """One pass over a split for evaluation: every sample of this rank's share once.

    Batches: ``{"video": uint8 [B, V, T, S, S, C] (V = test_num_clips x test_num_crops, clip-major),
    "label": long [B] (-1 = unlabelled), "keys": [B], "stats"}``; the last batch may be short and
    ranks may yield different counts (gather results at the end, not per step).
    """

    def __init__(self, cfg: EvalDataConfig, rank: int = 0, world_size: int = 1, *, require_labels: bool = True,
                 index: ShardIndex | None = None) -> None:
        _check_rank(rank, world_size)
        if getattr(cfg, "sources", ()):
            raise DataError("data.sources is for pre-training only: evaluation reads one shard set (data.shards)")
        self.cfg, self.rank, self.world_size, self.require_labels = cfg, rank, world_size, require_labels
        self.index = index or ShardIndex.load(cfg.shards)
        if require_labels and not self.index.labels:
            raise DataError(f"shards have no labels: {self.index.uri}/index.json lists none")
        shards = self.index.split(cfg.split)
        self.num_samples = sum(s.samples for s in shards)
        readers = cfg.readers_per_rank
        deal = assign_units(plan_units(shards, world_size * readers), world_size * readers)
        self._units = deal[rank * readers : (rank + 1) * readers]
        self._spec = cfg.clip_spec()
        self.stats = DataStats()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stats = DataStats()
        plan = EvalPlan(self._units, self._spec, self.cfg.batch_size, self.require_labels)
        for batch in _batches(EvalStream(plan), self.cfg):
            self.stats.add(batch["stats"])
            self.stats.check(self.cfg.max_decode_error_fraction, self.cfg.error_check_after)
            if batch["keys"]:
                yield batch
        if self.stats.samples_ok == 0:
            raise DataError(f"no sample of split {self.cfg.split!r} could be decoded on rank {self.rank}: "
                            f"{'; '.join(list(self.stats.reasons)[-3:])}")


def pretrain_loader(cfg: TrainDataConfig, mask: MaskConfig, grid: Grid, rank: int = 0, world_size: int = 1) -> TrainLoader:
    """VideoMAE V2 pre-training batches with ``enc_mask`` / ``dec_mask`` for token ``grid`` (T', H', W')."""
    return TrainLoader(cfg, rank, world_size, mask=mask, grid=grid)


def supervised_loader(cfg: TrainDataConfig, rank: int = 0, world_size: int = 1,
                      exclude: Mapping[int, frozenset[str]] | None = None) -> TrainLoader:
    """Fine-tuning batches (labels required; ``repeated_aug`` views per decoded video, no masks);
    ``exclude``: the keys each source leaves out (:func:`pipeline.data.hybrid.find_exclusions`)."""
    return TrainLoader(cfg, rank, world_size, require_labels=True, exclude=exclude)


def eval_loader(cfg: EvalDataConfig, rank: int = 0, world_size: int = 1, require_labels: bool = True) -> EvalLoader:
    """Evaluation / prediction batches of ``test_num_clips x test_num_crops`` views per video."""
    return EvalLoader(cfg, rank, world_size, require_labels=require_labels)
