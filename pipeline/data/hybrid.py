"""Labelled hybrids: several labelled shard sets trained as one label space, without the videos a
target dataset holds out (the post-pre-training stage of VideoMAE V2's progressive training).

VideoMAE V2 post-pre-trains on a labelled hybrid before fine-tuning on the target: K710 is
Kinetics-400/600/700 with their label spaces merged by class name and the videos of any of their
validation or test sets removed from training. Here, for ``data.sources`` in a supervised job:

- :func:`merge_labels`: the union of the sources' class names, matched by a normalised name
  (case, ``_`` or ``-`` for a space, runs of spaces), sorted; each source's label ids map into it
  (:attr:`LabelSpace.maps`). A class keeps the spelling of the first source that has it.
- :func:`find_exclusions`: the training samples to leave out, each with its reason:

  * a video of the held-out splits of ``data.exclude_shards`` (matched by the sha256 of the
    source video, which every sample's JSON records; every clip of such a video goes);
  * a repeat: the same source video (or the same time range of it) already taken from an
    earlier source or an earlier shard of the same source.

  Found once, on the driver, by reading only the samples' JSON members (on a seekable file the
  tar headers let the video bytes be skipped). The result is written to the run folder
  (:data:`EXCLUSIONS_NAME`, one line per sample, with the reason) and the ranks' loaders skip
  those samples; nothing is dropped without a line saying so.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from webdataset.tariterators import base_plus_ext

from pipeline.core import io as sio
from pipeline.core.errors import DataError
from pipeline.data.shard_index import ShardIndex, ShardInfo, open_shard

EXCLUSIONS_NAME = "excluded_samples.jsonl"


def class_key(name: str) -> str:
    """The name classes are matched by across datasets: lower case, ``_``/``-`` as spaces, spaces collapsed
    (Kinetics writes ``playing_guitar`` in one release and ``playing guitar`` in another)."""
    return " ".join(re.sub(r"[_-]", " ", name).lower().split())


@dataclass(frozen=True)
class LabelSpace:
    """The merged classes and, per source, the merged id of each of its label ids."""

    names: tuple[str, ...]
    maps: tuple[tuple[int, ...], ...]

    def summary(self, sources: Sequence[str]) -> str:
        sizes = ", ".join(f"{src} {len(m)}" for src, m in zip(sources, self.maps))
        return f"{len(self.names)} classes merged by name from {len(self.maps)} sources ({sizes})"


def merge_labels(labels: Sequence[Sequence[str]]) -> LabelSpace:
    """The union of the sources' ``labels`` (each an index's label names, in id order), by :func:`class_key`."""
    spelling: dict[str, str] = {}
    for names in labels:
        for name in names:
            spelling.setdefault(class_key(name), name)
    merged = sorted(spelling)
    where = {key: i for i, key in enumerate(merged)}
    maps = tuple(tuple(where[class_key(name)] for name in names) for names in labels)
    for s, names in enumerate(labels):
        keys = [class_key(n) for n in names]
        twice = sorted({n for n, k in zip(names, keys) if keys.count(k) > 1})
        if twice:
            raise DataError(f"data.sources[{s}] has classes that differ only in case, '_' or spaces: "
                            f"{', '.join(repr(n) for n in twice[:4])}: they would merge into one")
    return LabelSpace(tuple(spelling[k] for k in merged), maps)


# --------------------------------------------------------------------------------------------
# Which samples to leave out


@dataclass(frozen=True)
class SampleId:
    """What identifies a sample's video: the source file's sha256 and the time range cut from it."""

    shard: str
    key: str
    sha256: str
    start: float | None = None
    end: float | None = None


def sample_ids(shard: ShardInfo) -> Iterator[SampleId]:
    """The samples of one shard as :class:`SampleId` s, from their JSON members alone."""
    with open_shard(shard.url) as stream:
        seekable = getattr(stream, "seekable", lambda: False)()
        with tarfile.open(fileobj=stream, mode="r:" if seekable else "r|") as tar:
            for member in tar:
                key, ext = base_plus_ext(member.name)
                if key is None or ext.lower() != "json":
                    continue  # with "r:" the video bytes are skipped by a seek, not read
                fh = tar.extractfile(member)
                meta: dict[str, Any] = json.loads(fh.read()) if fh else {}
                yield SampleId(shard.name, key, str(meta.get("sha256") or ""), meta.get("start"), meta.get("end"))


def _scan(shards: Sequence[ShardInfo], threads: int = 8) -> list[list[SampleId]]:
    """Every sample id of ``shards``, per shard in the given order (read by ``threads`` at once: I/O bound)."""
    def one(shard: ShardInfo) -> list[SampleId]:
        try:
            return list(sample_ids(shard))
        except (OSError, tarfile.TarError, ValueError) as exc:
            raise DataError(f"shard {shard.url}: its samples could not be listed ({type(exc).__name__}: {exc})") from None

    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as pool:
        return list(pool.map(one, shards))


@dataclass
class Exclusions:
    """The samples each source leaves out (``keys[source]``) and one record per sample, with its reason."""

    keys: dict[int, set[str]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    held_out_videos: int = 0  # distinct videos in the excluded shard sets' held-out splits
    unidentified: int = 0  # training samples without a sha256 (shards written before it was recorded)

    def add(self, source: int, uri: str, sid: SampleId, reason: str) -> None:
        self.keys.setdefault(source, set()).add(sid.key)
        self.records.append({"source": uri, "shard": sid.shard, "key": sid.key, "sha256": sid.sha256,
                             "reason": reason})

    @property
    def count(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def summary(self) -> str:
        held = sum(1 for r in self.records if r["reason"].startswith("held out"))
        line = (f"{self.count} training samples left out: {held} of videos held out for validation/test "
                f"({self.held_out_videos} held-out videos checked), {self.count - held} repeats")
        return line + (f"; {self.unidentified} samples have no sha256 and were not checked" if self.unidentified else "")


def find_exclusions(sources: Sequence[ShardIndex], split: str, held_out: Sequence[tuple[ShardIndex, str]] = (),
                    threads: int = 8) -> Exclusions:
    """The samples of ``sources`` at ``split`` to leave out (module docstring). ``held_out``: shard sets
    and their ``+``-joined held-out splits (``val+test``) whose videos must never be trained on."""
    out = Exclusions()
    banned: dict[str, str] = {}  # sha256 -> where it is held out
    for index, splits in held_out:
        names = [s for s in splits.split("+") if s]
        shards = [sh for sh in index.shards if sh.split in names]
        for sh, ids in zip(shards, _scan(shards, threads)):
            for sid in ids:
                if sid.sha256:
                    banned.setdefault(sid.sha256, f"{index.uri} {sh.split}")
    out.held_out_videos = len(banned)
    seen: dict[tuple[str, float | None, float | None], str] = {}  # video identity -> where it was first taken
    for s, index in enumerate(sources):
        shards = index.split(split)
        for ids in _scan(shards, threads):
            for sid in ids:
                if not sid.sha256:
                    out.unidentified += 1
                    continue
                if sid.sha256 in banned:
                    out.add(s, index.uri, sid, f"held out: the same video is in {banned[sid.sha256]}")
                    continue
                ident = (sid.sha256, sid.start, sid.end)
                if ident in seen:
                    out.add(s, index.uri, sid, f"repeat of {seen[ident]}")
                else:
                    seen[ident] = f"{index.uri} {sid.shard} {sid.key}"
    return out


def write_exclusions(run_dir: str, exclusions: Exclusions) -> str:
    """``<run_dir>/excluded_samples.jsonl`` (one JSON line per sample left out); returns its uri."""
    uri = sio.join(run_dir, EXCLUSIONS_NAME)
    sio.write_text(uri, "".join(json.dumps(r, sort_keys=True) + "\n" for r in exclusions.records))
    return uri


def read_exclusions(run_dir: str, sources: Sequence[str]) -> dict[int, frozenset[str]]:
    """The keys each source leaves out, as the driver wrote them (``sources``: the uris, in order)."""
    uri = sio.join(run_dir, EXCLUSIONS_NAME)
    if not sio.exists(uri):
        raise DataError(f"{uri} is missing: the job's driver writes it (run jobs.finetune, not the loop alone)")
    where = {src: i for i, src in enumerate(sources)}
    keys: dict[int, set[str]] = {}
    for line in sio.read_text(uri).splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec["source"] not in where:
                raise DataError(f"{uri} names {rec['source']}, which is not one of data.sources / data.shards: "
                                "relaunch the job to find the samples to leave out again")
            keys.setdefault(where[rec["source"]], set()).add(rec["key"])
    return {s: frozenset(k) for s, k in keys.items()}


__all__ = ["EXCLUSIONS_NAME", "Exclusions", "LabelSpace", "SampleId", "class_key", "find_exclusions",
           "merge_labels", "read_exclusions", "sample_ids", "write_exclusions"]
