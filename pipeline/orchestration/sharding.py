"""The sharding job: a manifest in, WebDataset shards + ``index.json`` + ``quarantine.jsonl`` out.

Plan: read the manifest (bad rows are quarantined with their line number), give every entry a
stable key, order entries by (split, key) — a pure function of the manifest — and fill shards
of each split in that order up to the target size. Ray tasks ingest videos in parallel; the
driver consumes their results in plan order, so shard contents never depend on scheduling and a
rerun writes byte-identical shards.

Resume: each published shard has a state file naming the entries it accounts for. A rerun keeps
the longest prefix of shards per split whose state matches the plan and whose bytes verify, and
starts after it. Every manifest row ends up in exactly one place: a shard or the quarantine.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core import io as sio
from pipeline.core.config import help_field
from pipeline.core.errors import DataError, StorageError
from pipeline.data.ingest import IngestOptions, ingest
from pipeline.data.manifest import ManifestEntry, Reject, label_names, manifest_format, parse_manifest_lines
from pipeline.data.shard_writer import (
    INDEX_NAME,
    INDEX_VERSION,
    QUARANTINE_NAME,
    STATE_DIR,
    Sample,
    ShardState,
    TarShardWriter,
    read_state,
    sample_key,
    shard_name,
    verify_shard,
    write_state,
)

log = logging.getLogger(__name__)


@dataclass
class ShardSection:
    manifest: str = help_field("", help="CSV/JSONL manifest (uri[,label][,split][,start,end]); local or s3://")
    output: str = help_field("", help="output folder or s3:// prefix for shards, index.json, quarantine.jsonl")
    target_shard_mb: float = help_field(256.0, help="close a shard when the next sample would pass this size")
    max_samples_per_shard: int = help_field(0, help="also close a shard at this many samples (0 = no limit)")
    default_split: str = help_field("train", help="split of manifest rows that name none")
    transcode: bool = help_field(True, help="re-encode to H.264 (false: store source bytes after checks)")
    max_short_side: int = help_field(320, help="downscale so the short side is at most this (never upscale)")
    fps_cap: float = help_field(0.0, help="drop frames uniformly down to this fps (0 = keep)")
    crf: int = help_field(23, help="H.264 constant rate factor (lower = better, bigger)")
    preset: str = help_field("veryfast", help="x264 preset")
    min_frames: int = help_field(4, help="quarantine videos with fewer frames as too short")
    max_frames: int = help_field(100_000, help="quarantine videos claiming more frames (decompression bombs)")
    max_pixels: int = help_field(40_000_000, help="quarantine frames larger than this many pixels")
    max_duration: float = help_field(3600.0, help="quarantine videos longer than this many seconds")
    allowed_roots: list[str] = help_field([], help="if set, only read uris under these folders / s3 prefixes")
    verify: str = help_field("sha256", help="how a rerun checks existing shards: sha256 | size")
    task_timeout: float = help_field(600.0, help="seconds before one video's task is cancelled and quarantined")
    max_in_flight: int = help_field(0, help="videos processed concurrently (0 = 2 x cluster CPUs)")
    progress: bool = help_field(True, help="show a progress bar on stderr")

    def ingest_options(self) -> IngestOptions:
        return IngestOptions(
            transcode=self.transcode, max_short_side=self.max_short_side, fps_cap=self.fps_cap, crf=self.crf,
            preset=self.preset, min_frames=self.min_frames, max_frames=self.max_frames, max_pixels=self.max_pixels,
            max_duration=self.max_duration, allowed_roots=tuple(self.allowed_roots))


@dataclass
class PlanItem:
    line: int
    entry: ManifestEntry
    key: str
    split: str
    label: int | None


@dataclass
class ShardReport:
    inputs: int = 0
    samples: int = 0
    quarantined: int = 0
    skipped_shards: int = 0
    written_shards: int = 0
    seconds: float = 0.0
    by_split: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Planning


def read_plan(cfg: ShardSection) -> tuple[list[PlanItem], list[Reject], list[str]]:
    """Ordered plan items, rejected manifest rows, label names."""
    if not cfg.manifest:
        raise DataError("shard.manifest is not set")
    try:
        text = sio.read_text(cfg.manifest)
    except StorageError as exc:
        raise DataError(f"manifest {str(exc).removeprefix('read ')}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {cfg.manifest}: not UTF-8 text (byte {exc.start})") from None
    rejects: list[Reject] = []
    rows = parse_manifest_lines(text.splitlines(), manifest_format(cfg.manifest), cfg.manifest, rejects)
    labels = label_names(e for _, e in rows)
    index = {name: i for i, name in enumerate(labels)}
    items = [PlanItem(line, e, sample_key(e), e.split or cfg.default_split,
                      index[e.label] if e.label is not None else None) for line, e in rows]
    items.sort(key=lambda it: (it.split, it.key))
    return items, rejects, labels


def fingerprint(cfg: ShardSection, labels: list[str]) -> str:
    """What makes a shard's bytes what they are, besides its entries: output-relevant settings."""
    relevant = asdict(cfg.ingest_options()) | {"target": cfg.target_shard_mb, "max": cfg.max_samples_per_shard,
                                               "labels": labels}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=list).encode()).hexdigest()[:16]


def resume_point(cfg: ShardSection, items: list[PlanItem], fp: str) -> tuple[list[ShardState], set[str]]:
    """Shards from an earlier run that can be kept, and the keys they account for."""
    kept: list[ShardState] = []
    done: set[str] = set()
    by_split: dict[str, list[str]] = collections.defaultdict(list)
    for it in items:
        by_split[it.split].append(it.key)
    for split, keys in by_split.items():
        pos, index = 0, 0
        while (state := read_state(cfg.output, shard_name(split, index))) is not None:
            span = keys[pos:pos + len(state.covers)]
            if state.fingerprint != fp or state.covers != span or not verify_shard(cfg.output, state, cfg.verify):
                break
            kept.append(state)
            done.update(state.covers)
            pos, index = pos + len(state.covers), index + 1
    return kept, done


# --------------------------------------------------------------------------------------------
# Execution


def _results(items: list[PlanItem], opts: IngestOptions, cfg: ShardSection) -> Iterator[tuple[PlanItem, Sample | str]]:
    """Ingest ``items`` with Ray tasks, yielding results in plan order with bounded memory."""
    import ray

    from pipeline.orchestration.ray_train import forwarded_env

    # The driver's storage settings travel with each task, so workers of a Ray started earlier
    # (a test's, a cluster's) read the same endpoint with the same credentials.
    task = ray.remote(num_cpus=1, max_retries=1)(ingest).options(runtime_env={"env_vars": forwarded_env()})
    window = cfg.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    opts_ref = ray.put(opts)
    pending: collections.deque = collections.deque()
    it = iter(items)
    for item in it:
        pending.append((item, task.remote(item.entry, item.key, item.label, opts_ref)))
        if len(pending) >= window:
            break
    while pending:
        item, ref = pending.popleft()
        try:
            result = ray.get(ref, timeout=cfg.task_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            result = f"timed out after {cfg.task_timeout:.0f} s"
        except ray.exceptions.RayError as exc:
            result = f"worker crashed while processing: {type(exc).__name__}"
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, task.remote(nxt.entry, nxt.key, nxt.label, opts_ref)))
        yield item, result


class _SplitWriter:
    """Fills the shards of one split in order and publishes each with its state file."""

    def __init__(self, cfg: ShardSection, split: str, first_index: int, fp: str) -> None:
        self.cfg, self.split, self.index, self.fp = cfg, split, first_index, fp
        self.writer: TarShardWriter | None = None
        self.covers: list[str] = []
        self.quarantined: list[dict] = []
        self.published: list[ShardState] = []

    def add(self, item: PlanItem, sample: Sample) -> None:
        limit = self.cfg.target_shard_mb * 1e6
        full = self.writer is not None and (
            self.writer.bytes + sample.nbytes > limit
            or 0 < self.cfg.max_samples_per_shard <= self.writer.samples)
        if full:
            self.close()
        if self.writer is None:
            self.writer = TarShardWriter(self.cfg.output, shard_name(self.split, self.index))
        self.writer.add(sample)
        self.covers.append(item.key)

    def quarantine(self, item: PlanItem, reason: str) -> None:
        self.covers.append(item.key)
        self.quarantined.append({"uri": item.entry.uri, "reason": reason, "line": item.line, "key": item.key})

    def close(self) -> None:
        if self.writer is None:
            return
        nbytes, sha = self.writer.publish()
        state = ShardState(self.writer.name, self.split, self.writer.samples, nbytes, sha, self.fp,
                           self.covers, self.quarantined)
        write_state(self.cfg.output, state)
        self.published.append(state)
        self.writer, self.covers, self.quarantined = None, [], []
        self.index += 1

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="sharding", disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True)


def write_shards(cfg: ShardSection, todo: list[PlanItem], kept: list[ShardState], fp: str,
                 ) -> tuple[list[ShardState], list[dict]]:
    """Process ``todo`` in order; returns newly published shards and trailing quarantine entries."""
    next_index = collections.Counter(s.split for s in kept)
    writers: dict[str, _SplitWriter] = {}
    tail: list[dict] = []
    bar = _progress(len(todo), cfg.progress)
    try:
        for item, result in _results(todo, cfg.ingest_options(), cfg):
            w = writers.get(item.split)
            if w is None:
                for other in writers.values():
                    other.close()  # splits are processed one after another: finish the previous one
                w = writers[item.split] = _SplitWriter(cfg, item.split, next_index[item.split], fp)
            if isinstance(result, Sample):
                w.add(item, result)
            else:
                log.info("quarantined %s: %s", item.entry.uri, result)
                w.quarantine(item, result)
            bar.update(1)
        for w in writers.values():
            w.close()
            tail.extend(w.quarantined)  # entries after a split's last shard: recorded in quarantine.jsonl
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    return [s for w in writers.values() for s in w.published], tail


# --------------------------------------------------------------------------------------------
# The whole job


def _write_outputs(cfg: ShardSection, shards: list[ShardState], quarantine: list[dict], labels: list[str],
                   inputs: int, fp: str) -> dict:
    shards = sorted(shards, key=lambda s: s.name)
    by_split: dict[str, dict[str, int]] = {}
    for s in shards:
        d = by_split.setdefault(s.split, {"shards": 0, "samples": 0, "bytes": 0, "quarantined": 0})
        d["shards"] += 1
        d["samples"] += s.samples
        d["bytes"] += s.bytes
    quarantine = sorted(quarantine, key=lambda q: (q["line"], q["uri"]))
    for q in quarantine:
        if q.get("split"):
            by_split.setdefault(q["split"], {"shards": 0, "samples": 0, "bytes": 0, "quarantined": 0})
            by_split[q["split"]]["quarantined"] += 1
    samples = sum(s.samples for s in shards)
    if samples + len(quarantine) != inputs:  # the job's promise: every input is accounted for
        raise AssertionError(f"accounting broken: {inputs} inputs != {samples} samples + {len(quarantine)} quarantined")
    index = {
        "version": INDEX_VERSION,
        "shards": [s.summary() for s in shards],
        "labels": labels,
        "totals": {"inputs": inputs, "samples": samples, "quarantined": len(quarantine), "shards": len(shards),
                   "bytes": sum(s.bytes for s in shards), "by_split": by_split},
        "fingerprint": fp,
    }
    sio.write_text(sio.join(cfg.output, QUARANTINE_NAME),
                   "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantine))
    sio.write_text(sio.join(cfg.output, INDEX_NAME), json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


@dataclass
class ShardPlan:
    """Everything decided before any video is touched."""

    items: list[PlanItem]
    rejects: list[Reject]
    labels: list[str]
    fingerprint: str
    kept: list[ShardState]
    todo: list[PlanItem]


# ``.{name}.{8 random chars}.tmp``: TarShardWriter's and io.write_bytes' files before their rename.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(output: str) -> int:
    """Delete the temporary files a killed earlier run left in a local output folder.

    Files are published by renaming a temporary file; a run killed before the rename (SIGKILL,
    OOM) leaves it behind. Two jobs never write one output at once (their shards would collide),
    so any such file here is a leftover.
    """
    if sio.is_remote(output):
        return 0
    root = Path(output.removeprefix("file://"))
    stale = [p for d in (root, root / STATE_DIR) for p in d.glob(".*.tmp") if _TEMPORARY.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", len(stale))
    return len(stale)


def prepare(cfg: ShardSection) -> ShardPlan:
    """Validate the config, read the manifest, and find what an earlier run already finished.

    Needs no Ray, so a bad manifest or an unwritable output fails in a second, with one line.
    """
    if not cfg.output:
        raise DataError("shard.output is not set")
    if cfg.verify not in ("sha256", "size"):
        raise DataError(f"shard.verify must be sha256 or size, got {cfg.verify!r}")
    sio.check_writable(cfg.output)
    remove_stale_temporaries(cfg.output)
    items, rejects, labels = read_plan(cfg)
    fp = fingerprint(cfg, labels)
    kept, done = resume_point(cfg, items, fp)
    todo = [it for it in items if it.key not in done]
    log.info("%d inputs: %d rows rejected, %d entries already in %d verified shards, %d to process",
             len(items) + len(rejects), len(rejects), len(done), len(kept), len(todo))
    return ShardPlan(items, rejects, labels, fp, kept, todo)


def shard(cfg: ShardSection, plan: ShardPlan | None = None) -> tuple[dict, ShardReport]:
    """Run the sharding job (Ray must be initialised). Returns the index and a report."""
    t0 = time.monotonic()
    plan = plan or prepare(cfg)
    items, rejects, labels, fp, kept = plan.items, plan.rejects, plan.labels, plan.fingerprint, plan.kept
    new, tail = write_shards(cfg, plan.todo, kept, fp)
    split_of = {it.key: it.split for it in items}
    quarantine = [{"uri": r.uri, "reason": f"manifest row: {r.reason}", "line": r.line, "split": None}
                  for r in rejects]
    for q in [q for s in kept + new for q in s.quarantined] + tail:
        quarantine.append({"uri": q["uri"], "reason": q["reason"], "line": q["line"], "split": split_of[q["key"]]})
    index = _write_outputs(cfg, kept + new, quarantine, labels, len(items) + len(rejects), fp)
    report = ShardReport(inputs=len(items) + len(rejects), samples=index["totals"]["samples"],
                         quarantined=len(quarantine), skipped_shards=len(kept), written_shards=len(new),
                         seconds=time.monotonic() - t0, by_split=index["totals"]["by_split"],
                         reasons=dict(collections.Counter(_reason_class(q["reason"]) for q in quarantine)))
    return index, report


def _reason_class(reason: str) -> str:
    return reason.split(":", 1)[0]


def format_report(report: ShardReport, output: str) -> str:
    """The summary table printed at the end of the job."""
    lines = [f"{'split':<10}{'shards':>8}{'samples':>10}{'quarantined':>13}{'MB':>10}"]
    for split, d in sorted(report.by_split.items()):
        lines.append(f"{split:<10}{d['shards']:>8}{d['samples']:>10}{d['quarantined']:>13}{d['bytes'] / 1e6:>10.1f}")
    unsplit = report.quarantined - sum(d["quarantined"] for d in report.by_split.values())
    if unsplit:
        lines.append(f"{'(manifest)':<10}{'':>8}{'':>10}{unsplit:>13}")
    lines.append(f"inputs {report.inputs} = samples {report.samples} + quarantined {report.quarantined}; "
                 f"shards written {report.written_shards}, kept from an earlier run {report.skipped_shards}; "
                 f"{report.seconds:.1f} s ({report.inputs / max(report.seconds, 1e-9):.1f} videos/s)")
    for reason, n in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"  quarantined {n:>5} x {reason}")
    lines.append(f"output: {output}")
    return "\n".join(lines)
