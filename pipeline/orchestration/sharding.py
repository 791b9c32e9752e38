"""The sharding job: a manifest in, WebDataset shards + ``index.json`` + ``quarantine.jsonl`` out.

Plan (the driver, no video touched): stream the manifest into a temporary SQLite database
(:mod:`pipeline.data.shard_plan`): bad rows are quarantined with their line number, every good
row gets a stable key, and the rows of each split, in key order, make shards of
``videos_per_shard`` rows. Membership is a pure function of the manifest and the config, so
shard contents never depend on scheduling or on the cluster's size, and a rerun writes
byte-identical shards.

Run: one Ray task per shard (:mod:`pipeline.orchestration.shard_tasks`) ingests its videos,
writes, hashes and publishes its tar, then its state file, and returns that small state. The
driver keeps a bounded number of shard tasks in flight, collects their states in whatever order
they finish (a slow video delays only its own shard), and writes the index and the quarantine
at the end. No video bytes pass through the driver, and its memory grows with the number of
shards, not videos.

Resume: a rerun's shard task keeps its shard when the state file names the same rows and
settings and the object is there as the state describes (size, and ETag on S3; ``verify =
"sha256"`` re-hashes, in the tasks). Every manifest row ends up in exactly one place: a shard
or the quarantine.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core import io as sio
from pipeline.core.config import help_field
from pipeline.core.errors import DataError, TubeletError
from pipeline.data.ingest import IngestOptions, check_clip_options
from pipeline.data.shard_plan import ShardPlan, ShardSpec
from pipeline.data.shard_writer import (
    INDEX_NAME,
    INDEX_VERSION,
    QUARANTINE_NAME,
    STATE_DIR,
    ShardState,
    read_state,
    verify_shard,
)
from pipeline.orchestration.shard_tasks import ShardResult, TaskSettings, write_shard

log = logging.getLogger(__name__)

VERIFY_MODES = ("record", "sha256")
SHARD_TASK_RETRIES = 3  # a shard task whose worker or node dies starts over; its shard comes out the same


@dataclass
class ShardSection:
    manifest: str = help_field("", help="CSV/JSONL manifest (uri[,label][,split][,start,end]); local or s3://")
    output: str = help_field("", help="output folder or s3:// prefix for shards, index.json, quarantine.jsonl")
    videos_per_shard: int = help_field(128, help="manifest rows per shard (with clip_seconds: their clips)")
    default_split: str = help_field("train", help="split of manifest rows that name none")
    transcode: bool = help_field(True, help="re-encode to H.264 (false: store source bytes after checks)")
    remux: bool = help_field(True, help="with transcode: H.264 inputs within the limits are remuxed, not re-encoded")
    max_short_side: int = help_field(320, help="downscale so the short side is at most this (never upscale)")
    fps_cap: float = help_field(0.0, help="drop frames uniformly down to this fps (0 = keep)")
    crf: int = help_field(23, help="H.264 constant rate factor (lower = better, bigger)")
    preset: str = help_field("veryfast", help="x264 preset")
    clip_seconds: float = help_field(0.0, help="cut each video (or manifest range) into clips this long (0 = whole)")
    min_clip_seconds: float = help_field(1.0, help="a last window shorter than this is not made a clip")
    clip_mode: str = help_field("fixed", help="fixed windows, or 'scenes': cut at scene changes (PySceneDetect)")
    scene_threshold: float = help_field(27.0, help="PySceneDetect content-detector threshold for clip_mode scenes")
    min_frames: int = help_field(4, help="quarantine videos with fewer frames as too short")
    max_frames: int = help_field(100_000, help="quarantine videos (clips) claiming more frames (decompression bombs)")
    max_pixels: int = help_field(40_000_000, help="quarantine frames larger than this many pixels")
    max_duration: float = help_field(3600.0, help="quarantine videos longer than this many seconds")
    allowed_roots: list[str] = help_field([], help="if set, only read uris under these folders / s3 prefixes")
    verify: str = help_field("record", help="how a rerun trusts a shard: record (size, S3 ETag) | sha256 (re-read)")
    task_timeout: float = help_field(600.0, help="seconds before one video's task is cancelled and quarantined")
    max_in_flight: int = help_field(0, help="shard tasks running at once (0 = 2 x cluster CPUs)")
    videos_in_flight: int = help_field(0, help="videos each shard task ingests at once (0 = 2, more when there are "
                                                 "fewer shards than cluster CPUs)")
    progress: bool = help_field(True, help="show a progress bar on stderr")

    def ingest_options(self) -> IngestOptions:
        return IngestOptions(
            transcode=self.transcode, max_short_side=self.max_short_side, fps_cap=self.fps_cap, crf=self.crf,
            preset=self.preset, min_frames=self.min_frames, max_frames=self.max_frames, max_pixels=self.max_pixels,
            max_duration=self.max_duration, allowed_roots=tuple(self.allowed_roots), remux=self.remux,
            clip_seconds=self.clip_seconds, min_clip_seconds=self.min_clip_seconds, clip_mode=self.clip_mode,
            scene_threshold=self.scene_threshold)


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
    clips_quarantined: int = 0
    encodes: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Planning


def fingerprint(cfg: ShardSection, labels: list[str]) -> str:
    """What makes a shard's bytes what they are, besides its rows: output-relevant settings."""
    relevant = asdict(cfg.ingest_options()) | {"videos_per_shard": cfg.videos_per_shard, "labels": labels}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=list).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Execution


def _blob(text: str) -> bytes:
    """A uri as SQLite keeps it: UTF-8 with lone surrogates kept (hostile manifests have them)."""
    return text.encode("utf-8", "surrogatepass")


class _Results:
    """The shard states the driver has received, and their quarantine entries, on disk.

    Quarantine entries can be many (a bad crawl); they wait in SQLite, not in memory, and
    ``quarantine.jsonl`` is streamed out of it in manifest order.
    """

    def __init__(self, workdir: str) -> None:
        self.db = sqlite3.connect(os.path.join(workdir, "results.sqlite"), isolation_level=None)
        self.db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
            CREATE TABLE quarantine (line INTEGER, start REAL, uri BLOB, split TEXT, clip INTEGER, entry TEXT);
        """)
        self.shards: list[dict] = []  # summaries of the shards that hold samples
        self.by_split: dict[str, dict[str, int]] = {}
        self.kept = self.written = self.samples = self.videos_quarantined = self.clips_quarantined = 0
        self.dropped_seconds = 0.0
        self.encodes: collections.Counter[str] = collections.Counter()

    def _split(self, split: str) -> dict[str, int]:
        return self.by_split.setdefault(split, {"shards": 0, "samples": 0, "bytes": 0, "quarantined": 0})

    def add(self, result: ShardResult) -> None:
        s = result.state
        self.kept += result.kept
        self.written += not result.kept
        self.samples += s.samples
        self.encodes.update(s.encodes)
        self.dropped_seconds += s.dropped_seconds
        d = self._split(s.split)
        if s.samples:
            self.shards.append(s.summary())
            d["shards"] += 1
            d["samples"] += s.samples
            d["bytes"] += s.bytes
        rows = []
        for q in s.quarantined:
            clip = bool(q.get("clip"))
            entry = {"uri": q["uri"], "reason": q["reason"], "line": q["line"], "split": s.split}
            if clip:
                entry |= {"start": q["start"], "end": q["end"], "key": q["key"]}
                self.clips_quarantined += 1
            else:
                self.videos_quarantined += 1
                d["quarantined"] += 1
            rows.append((q["line"], q.get("start") or 0.0, _blob(q["uri"]), s.split, clip, json.dumps(entry, sort_keys=True)))
        self.db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)", rows)

    def add_rejects(self, plan: ShardPlan) -> None:
        rows = ((r.line, 0.0, _blob(r.uri), None, False,
                 json.dumps({"uri": r.uri, "reason": f"manifest row: {r.reason}", "line": r.line, "split": None},
                            sort_keys=True)) for r in plan.rejects())
        self.db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?)", rows)

    def quarantine_lines(self) -> Iterator[str]:
        for (entry,) in self.db.execute("SELECT entry FROM quarantine ORDER BY line, uri, start"):
            yield entry + "\n"

    def reasons(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for (entry,) in self.db.execute("SELECT entry FROM quarantine"):
            counts[_reason_class(json.loads(entry)["reason"])] += 1
        return dict(counts)

    def close(self) -> None:
        self.db.close()


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="sharding", disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True)


def _raise_cause(exc: BaseException) -> None:
    """A shard task's own error (a storage outage after its retries) as the one line it is."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TubeletError):
        raise cause from None
    raise exc


@dataclass
class _InFlight:
    spec: ShardSpec
    isolated: bool
    deadline: float  # inline only: past it the task is cancelled and retried isolated


def run_shard_tasks(cfg: ShardSection, plan: ShardPlan, fp: str, results: _Results) -> None:
    """Run one task per shard, at most ``max_in_flight`` at once, and collect their states.

    A shard's first task ingests its videos inline. If that task dies (a decoder crash, its node
    lost, or cancelled here after overrunning ``task_timeout`` per video: a call stuck where the
    per-video alarm cannot reach), the shard is run again isolated, each video in a task of its
    own, with Ray's retries for lost nodes; only if that fails too does the job stop.
    """
    import ray

    from pipeline.orchestration.ray_train import forwarded_env

    # The driver's storage settings travel with each task (and its video tasks), so workers of a
    # Ray started earlier (a test's, a cluster's) read the same endpoint with the same credentials.
    env = {"env_vars": forwarded_env()}
    inline = ray.remote(write_shard).options(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD", runtime_env=env)
    isolated = ray.remote(write_shard).options(num_cpus=1, max_retries=SHARD_TASK_RETRIES, scheduling_strategy="SPREAD",
                                               runtime_env=env)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    window = cfg.max_in_flight or max(2, 2 * cpus)
    # Few shards (a small dataset on a big cluster): an isolated shard runs more of its videos at
    # once, so that about 2 x CPUs videos are in flight in all.
    per_shard = cfg.videos_in_flight or max(2, -(-2 * cpus // max(1, min(window, plan.num_shards()))))
    settings = TaskSettings(cfg.output, fp, "record" if cfg.verify == "size" else cfg.verify, cfg.task_timeout,
                            min(per_shard, cfg.videos_per_shard))
    opts_ref = ray.put(cfg.ingest_options())
    settings_refs = {False: ray.put(settings), True: ray.put(dataclasses.replace(settings, isolate=True))}
    specs = plan.shards()
    pending: dict = {}

    def submit(spec: ShardSpec | None, isolate: bool = False) -> None:
        if spec is not None:
            ref = (isolated if isolate else inline).remote(spec, opts_ref, settings_refs[isolate])
            budget = cfg.task_timeout * (len(spec.items) + 1) if cfg.task_timeout > 0 else float("inf")
            pending[ref] = _InFlight(spec, isolate, time.monotonic() + budget)

    bar = _progress(plan.num_rows, cfg.progress)
    try:
        for _ in range(window):
            submit(next(specs, None))
        while pending:
            soonest = min((f.deadline for f in pending.values() if not f.isolated), default=float("inf"))
            timeout = None if soonest == float("inf") else max(0.0, soonest - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            now = time.monotonic()
            for ref in [r for r, f in pending.items() if not f.isolated and f.deadline <= now and r not in done]:
                log.warning("shard %s: still running after %.0f s; cancelling it to run its videos isolated",
                            pending[ref].spec.name, cfg.task_timeout * (len(pending[ref].spec.items) + 1))
                ray.cancel(ref, force=True)
                done.append(ref)
            for ref in done:
                flight = pending.pop(ref)
                try:
                    results.add(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    _raise_cause(exc)
                except ray.exceptions.RayError as exc:  # the task's process or node died, or it was cancelled
                    if flight.isolated:
                        raise TubeletError(f"shard {flight.spec.name}: its isolated task failed "
                                           f"{1 + SHARD_TASK_RETRIES} times ({type(exc).__name__}); "
                                           "rerun the job to resume") from None
                    log.warning("shard %s: its task died (%s); running its videos isolated", flight.spec.name,
                                type(exc).__name__)
                    submit(flight.spec, isolate=True)
                    continue
                bar.update(len(flight.spec.items))
                submit(next(specs, None))
    except BaseException:
        for ref in pending:  # stop the other shards: a rerun redoes what they had not committed
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()


# --------------------------------------------------------------------------------------------
# The whole job


def _write_outputs(cfg: ShardSection, plan: ShardPlan, results: _Results, fp: str) -> dict:
    shards = sorted(results.shards, key=lambda s: s["name"])
    by_split = {k: results.by_split[k] for k in sorted(results.by_split)}
    quarantined = results.videos_quarantined + plan.num_rejects
    videos = plan.num_rows - results.videos_quarantined
    if videos + quarantined != plan.inputs:  # the job's promise: every input is accounted for
        raise AssertionError(f"accounting broken: {plan.inputs} inputs != {videos} sharded + {quarantined} quarantined")
    if results.samples < videos:
        raise AssertionError(f"accounting broken: {videos} videos sharded into only {results.samples} samples")
    index = {
        "version": INDEX_VERSION,
        "shards": shards,
        "labels": plan.labels,
        "totals": {"inputs": plan.inputs, "videos": videos, "samples": results.samples, "quarantined": quarantined,
                   "clips_quarantined": results.clips_quarantined,
                   "clip_seconds_dropped": round(results.dropped_seconds, 3), "encodes": dict(sorted(results.encodes.items())),
                   "shards": len(shards),
                   "bytes": sum(s["bytes"] for s in shards), "by_split": by_split},
        "fingerprint": fp,
    }
    _write_streamed(sio.join(cfg.output, QUARANTINE_NAME), results.quarantine_lines())
    sio.write_text(sio.join(cfg.output, INDEX_NAME), json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def _write_streamed(uri: str, lines: Iterator[str]) -> None:
    """Write a file of many lines without holding it: to a local temporary file, then published."""
    import tempfile

    local_dir = None if sio.is_remote(uri) else str(Path(uri.removeprefix("file://")).parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(uri).name}.", suffix=".tmp", dir=local_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        os.chmod(tmp, 0o644)
        sio.upload_file(tmp, uri)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ``.{name}.{8 random chars}.tmp``: TarShardWriter's and io.write_bytes' files before their rename.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(output: str, quiet: bool = False) -> int:
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
    if stale and not quiet:
        log.info("removed %d temporary files left by an interrupted run", len(stale))
    return len(stale)


@dataclass
class Prepared:
    """Everything decided before any video is touched: the plan and the settings' fingerprint."""

    plan: ShardPlan
    fingerprint: str

    def close(self) -> None:
        self.plan.close()


def check_config(cfg: ShardSection) -> None:
    """One-line errors for settings that cannot work, before anything is read or started."""
    if not cfg.output:
        raise DataError("shard.output is not set")
    if not cfg.manifest:
        raise DataError("shard.manifest is not set")
    if cfg.verify not in (*VERIFY_MODES, "size"):
        raise DataError(f"shard.verify must be one of {', '.join(VERIFY_MODES)}, got {cfg.verify!r}")
    if cfg.videos_per_shard < 1:
        raise DataError(f"shard.videos_per_shard must be >= 1, got {cfg.videos_per_shard}")
    check_clip_options(cfg.ingest_options())


def prepare(cfg: ShardSection) -> Prepared:
    """Validate the config and the output, and plan the shards from the manifest.

    Needs no Ray, so a bad manifest or an unwritable output fails in a second, with one line.
    """
    check_config(cfg)
    sio.check_writable(cfg.output)
    remove_stale_temporaries(cfg.output)
    t0 = time.monotonic()
    plan = ShardPlan(cfg.manifest, cfg.default_split, cfg.videos_per_shard)
    log.info("%d inputs: %d rows rejected, %d videos in %d shards (planned in %.1f s)", plan.inputs,
             plan.num_rejects, plan.num_rows, plan.num_shards(), time.monotonic() - t0)
    return Prepared(plan, fingerprint(cfg, plan.labels))


def shard(cfg: ShardSection, prepared: Prepared | None = None) -> tuple[dict, ShardReport]:
    """Run the sharding job (Ray must be initialised). Returns the index and a report."""
    t0 = time.monotonic()
    prepared = prepared or prepare(cfg)
    plan, fp = prepared.plan, prepared.fingerprint
    results = _Results(plan.workdir)
    try:
        run_shard_tasks(cfg, plan, fp, results)
        remove_stale_temporaries(cfg.output, quiet=True)  # left by shard tasks killed and retried in this run
        results.add_rejects(plan)
        index = _write_outputs(cfg, plan, results, fp)
        report = ShardReport(inputs=plan.inputs, samples=results.samples,
                             quarantined=index["totals"]["quarantined"], skipped_shards=results.kept,
                             written_shards=results.written, seconds=time.monotonic() - t0,
                             by_split=index["totals"]["by_split"], reasons=results.reasons(),
                             clips_quarantined=results.clips_quarantined, encodes=dict(sorted(results.encodes.items())))
    finally:
        results.close()
        prepared.close()
    return index, report


def published_shards(cfg: ShardSection, prepared: Prepared, threads: int = 16) -> tuple[list[ShardState], int]:
    """The planned shards an earlier run committed and that still verify, and how many are not.

    Reads each shard's state from the driver (threads in parallel): for a completion check
    (the pipeline's), not the job, whose shard tasks do this themselves on the cluster.
    """
    verify = "record" if cfg.verify == "size" else cfg.verify

    def check(spec: ShardSpec) -> ShardState | None:
        state = read_state(cfg.output, spec.name)
        ok = (state is not None and state.fingerprint == prepared.fingerprint and state.members == spec.members_digest()
              and (state.samples == 0 or verify_shard(cfg.output, state, verify)))
        return state if ok else None

    with ThreadPoolExecutor(threads) as pool:
        states = list(pool.map(check, prepared.plan.shards()))
    kept = [s for s in states if s is not None]
    return kept, len(states) - len(kept)


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
    videos = report.inputs - report.quarantined
    clips = f", {report.clips_quarantined} clips quarantined" if report.clips_quarantined else ""
    encodes = ", ".join(f"{n} {kind}" for kind, n in report.encodes.items())
    lines.append(f"inputs {report.inputs} = videos sharded {videos} + quarantined {report.quarantined}; "
                 f"samples {report.samples}{clips}{f' ({encodes})' if encodes else ''}")
    lines.append(f"shards written {report.written_shards}, kept from an earlier run {report.skipped_shards}; "
                 f"{report.seconds:.1f} s ({report.inputs / max(report.seconds, 1e-9):.1f} videos/s)")
    for reason, n in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
        lines.append(f"  quarantined {n:>5} x {reason}")
    lines.append(f"output: {output}")
    return "\n".join(lines)
