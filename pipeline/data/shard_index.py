"""Shard index, the split of shards over ranks and loader workers, and tolerant tar reading.

``ShardIndex.load(uri)`` reads ``<shards>/index.json`` (local or ``s3://``) written by
``jobs.shard``. :func:`plan_units` cuts the shards of a split into *units* (a shard, or a strided
slice of one when there are fewer shards than readers) and :func:`assign_units` deals them to
``parts`` readers by sample count (largest first to the least loaded reader), so unequal shard
sizes still give balanced readers. :func:`read_unit` streams one unit's samples through
WebDataset's tar iterator and turns every failure into a counted event instead of an exception:
the index states how many samples each shard holds, so a tar that stops early (tarfile treats a
damaged header after the first member as the end of the archive) is detected and the samples it
lost are counted.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import webdataset as wds
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from pipeline.core import io
from pipeline.core.errors import DataError, StorageError, one_line
from pipeline.data.shard_writer import INDEX_NAME

log = logging.getLogger(__name__)

S3_BLOCK_SIZE = 8 * 2**20  # ranged GETs of 8 MiB: a shard streams without being downloaded whole


@dataclass(frozen=True)
class ShardInfo:
    """One shard of the index: its URL and how many samples it must hold."""

    name: str
    url: str
    split: str
    samples: int
    bytes: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class ShardIndex:
    """The parsed ``index.json``: every shard, the label names, the writer's totals."""

    uri: str
    shards: tuple[ShardInfo, ...]
    labels: tuple[str, ...] = ()
    totals: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, uri: str) -> ShardIndex:
        """Read ``<uri>/index.json`` (``uri`` a folder or ``s3://`` prefix). DataError when unusable."""
        if not uri:
            raise DataError("data.shards is empty: set it to a shard folder or s3:// prefix")
        index_uri = io.join(uri, INDEX_NAME)
        try:
            text = io.read_text(index_uri)
        except StorageError as exc:
            raise DataError(f"no shard index at {index_uri} (run jobs.shard first?): {exc}") from None
        try:
            raw = json.loads(text)
            shards = tuple(
                ShardInfo(name=s["name"], url=io.join(uri, s["name"]), split=s.get("split") or s["name"].rsplit("-", 1)[0],
                          samples=int(s["samples"]), bytes=int(s.get("bytes", 0)), sha256=s.get("sha256", ""))
                for s in raw["shards"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"shard index {index_uri} is malformed: {type(exc).__name__}: {exc}") from None
        return cls(uri=uri, shards=shards, labels=tuple(raw.get("labels") or ()), totals=dict(raw.get("totals") or {}))

    def split(self, name: str, key: str = "") -> list[ShardInfo]:
        """The non-empty shards of split ``name``, in index order. DataError when there are none;
        with ``key`` (the config key that named the split) the error names it and the fix.

        ``"unlabelled+train"`` is the union of several splits (pre-training on every clip that is
        not held out); each named split must exist.
        """
        names = name.split("+")
        splits = sorted({s.split for s in self.shards})
        missing = [one for one in names if one not in splits]
        if missing:
            if key:
                raise DataError(f"{key}={name!r}: {self.uri} has no {missing[0]!r} split (its splits: "
                                f"{', '.join(splits) or 'none'}): set {key} to one of them")
            raise DataError(f"shard index {self.uri} has no {missing[0]!r} split (splits: {', '.join(splits) or 'none'})")
        chosen = [s for s in self.shards if s.split in names and s.samples > 0]
        if not chosen:
            if key:
                raise DataError(f"{key}={name!r}: split {name!r} of {self.uri} has no samples: set {key} to another "
                                f"split ({', '.join(splits)}) or shard more data")
            raise DataError(f"split {name!r} of {self.uri} has no samples")
        return chosen

    def num_samples(self, name: str, key: str = "") -> int:
        return sum(s.samples for s in self.split(name, key))


# ------------------------------------------------------------------------------------------
# s3:// for WebDataset


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """WebDataset opener for ``s3://``: a streaming fsspec file (ranged reads), with retries on open."""
    if mode != "rb":
        raise ValueError(f"s3 shards are read-only here, got mode {mode!r}")
    fs, path = io.filesystem(url)
    return io.retrying(f"open {url}", lambda: fs.open(path, "rb", block_size=S3_BLOCK_SIZE, cache_type="readahead"))


def register_s3_opener() -> None:
    """Let ``webdataset.gopen`` open ``s3://`` URLs (WebDataset has no S3 opener of its own).

    Called by the loader before it opens a shard, in each worker process; idempotent.
    """
    wds.gopen_schemes["s3"] = _gopen_s3


def open_shard(url: str) -> BinaryIO:
    """A readable binary stream of shard ``url`` (local path or ``s3://``)."""
    if url.startswith("s3://"):
        register_s3_opener()
    return wds.gopen(url, "rb")


# ------------------------------------------------------------------------------------------
# Splitting shards over ranks and workers


@dataclass(frozen=True)
class Unit:
    """What one reader reads: shard ``shard``, samples whose ordinal ``% num_slices == slice``."""

    shard: ShardInfo
    slice: int = 0
    num_slices: int = 1

    @property
    def expected(self) -> int:
        """Samples this unit must yield (ordinals ``slice, slice + num_slices, ...`` of the shard)."""
        return len(range(self.slice, self.shard.samples, self.num_slices))

    @property
    def name(self) -> str:
        return self.shard.name if self.num_slices == 1 else f"{self.shard.name}[{self.slice}::{self.num_slices}]"


def plan_units(shards: Sequence[ShardInfo], readers: int) -> list[Unit]:
    """Whole shards when there are at least ``readers`` of them, else each cut into strided slices.

    Slicing lets a 3-shard dataset feed 2 ranks x 2 workers without any reader sharing samples
    with another; each slice's reader reads the whole tar but decodes only its own samples.
    """
    if len(shards) >= readers:
        return [Unit(s) for s in shards]
    slices = -(-readers // len(shards))
    return [Unit(s, i, slices) for s in shards for i in range(slices) if Unit(s, i, slices).expected > 0]


def assign_units(units: Sequence[Unit], parts: int, rng: random.Random | None = None) -> list[list[Unit]]:
    """Deal ``units`` to ``parts`` readers: largest first to the least loaded (ties: lowest reader).

    ``rng`` shuffles the order first, so equal-sized shards go to different readers each epoch.
    The assignment is a pure function of the inputs: every rank computes the same one.
    """
    order = list(units)
    if rng is not None:
        rng.shuffle(order)
    order.sort(key=lambda u: -u.expected)  # stable: equal sizes keep the shuffled order
    out: list[list[Unit]] = [[] for _ in range(parts)]
    load = [0] * parts
    for unit in order:
        target = min(range(parts), key=lambda p: (load[p], p))
        out[target].append(unit)
        load[target] += unit.expected
    return out


# ------------------------------------------------------------------------------------------
# Reading


@dataclass
class RawSample:
    """An undecoded sample: tar members by extension (``mp4``, ``json``, ``cls``)."""

    key: str
    members: dict[str, bytes]
    shard: str
    pass_index: int = 0  # which pass over the reader's units (a reader cycles to fill an epoch)
    source: int = 0  # which of data.sources it comes from (0 for a single shard set)


@dataclass(frozen=True)
class ShardFault:
    """A shard that could not be read to its end: ``lost`` samples of it never arrived."""

    shard: str
    reason: str
    lost: int
    source: int = 0  # which of data.sources (0 for a single shard set)


def _group(files: Iterator[dict[str, Any]], shard: str) -> Iterator[RawSample]:
    """Tar members -> samples, grouping consecutive members by key (WebDataset's convention)."""
    current: RawSample | None = None
    for item in files:
        key, ext = base_plus_ext(item["fname"])
        if key is None:
            continue  # a member with no extension belongs to no sample; the count check still applies
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            current = RawSample(key=key, members={}, shard=shard)
        if ext.lower() in current.members:
            raise DataError(f"duplicate member {item['fname']}")
        current.members[ext.lower()] = item["data"]
    if current is not None:
        yield current


def read_unit(unit: Unit) -> Iterator[RawSample | ShardFault]:
    """The unit's samples in tar order, then a :class:`ShardFault` if the shard fell short.

    Never raises for a bad shard: open failures, damaged tar headers, truncation and a shard
    holding fewer samples than the index states all end in one ShardFault with the lost count.
    """
    got = 0
    try:
        with open_shard(unit.shard.url) as stream:
            # reraise: the first error ends this shard (a damaged tar stream cannot be resynchronised)
            files = tar_file_iterator(stream, handler=wds.reraise_exception)
            for ordinal, sample in enumerate(_group(files, unit.shard.name)):
                if ordinal % unit.num_slices == unit.slice:
                    got += 1
                    yield sample
    except Exception as exc:  # noqa: BLE001 - any failure of a shard is counted, not fatal
        reason = f"unreadable after {got} of {unit.expected} samples: {one_line(exc, with_type=True)[:200]}"
        yield ShardFault(unit.name, reason, max(0, unit.expected - got))
        return
    if got < unit.expected:
        yield ShardFault(unit.name, f"truncated: {got} of {unit.expected} samples", unit.expected - got)
    elif got > unit.expected:
        log.warning("shard %s holds %d samples, index says %d", unit.name, got, unit.expected)
