"""What runs on the workers of the sharding job: one Ray task per shard.

A shard task owns one shard from start to finish. It first checks whether an earlier run
already published the shard (its state file names the same rows and settings, and the object
is there with the size, and on S3 the ETag, that the state names; ``verify = "sha256"`` reads
it back and hashes it). If not, it ingests the shard's videos in key order, writes them into
the tar while hashing it, publishes the tar, and last writes the state file: the commit. A task
killed at any point leaves at most a temporary file and an object without a state, which the
next attempt overwrites with the same bytes.

Two ways to ingest the videos:
- **inline** (first attempt): in the shard task's own process, one after another, each under
  an alarm of ``task_timeout`` seconds (a video over it is quarantined as timed out). No extra
  processes, no copies: the fast path.
- **isolated** (when the inline attempt died: a decoder crash, the node lost, killed by the
  driver for overrunning): each video in its own Ray task on the same node, a few at a time,
  so that a video that crashes its process costs that video (quarantined after Ray's retries)
  and not the shard.

The driver only schedules these tasks and receives their small :class:`ShardResult`; no video
bytes pass through it.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pipeline.data.ingest import Ingested, IngestOptions, ingest
from pipeline.data.manifest import ManifestEntry
from pipeline.data.shard_plan import PlanItem, ShardSpec
from pipeline.data.shard_writer import ShardState, TarShardWriter, read_state, verify_shard, write_state


@dataclass(frozen=True)
class TaskSettings:
    """The part of the shard config a shard task needs besides its rows."""

    output: str
    fingerprint: str
    verify: str = "record"
    task_timeout: float = 600.0
    videos_in_flight: int = 2  # isolated mode: video tasks at once
    isolate: bool = False


# Fault injection for the reliability tests: a process about to ingest a uri containing this text
# dies on the spot, as a decoder crash would take it down. Unset, it costs one lookup per video.
CRASH_ENV = "TUBELET_TEST_CRASH_ON_URI"


def ingest_video(entry: ManifestEntry, key: str, label: int | None, opts: IngestOptions) -> Ingested | str:
    """:func:`ingest`, the unit of work of both modes."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in entry.uri:
        os._exit(70)
    return ingest(entry, key, label, opts)


class _VideoTimeout(BaseException):
    """Raised by the alarm; a BaseException so that ingest's own error handling lets it through."""


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`_VideoTimeout` in this (main) thread after ``seconds``. The handler runs when
    control is back in Python: decoding loops return to it every frame; a call stuck in C for
    longer is the driver's to end (it cancels the task and retries it isolated)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise _VideoTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _ingested_inline(items: tuple[PlanItem, ...], opts: IngestOptions, settings: TaskSettings,
                     ) -> Iterator[tuple[PlanItem, object]]:
    """Ingest ``items`` here, in order, each under the alarm."""
    for item in items:
        try:
            with _alarm(settings.task_timeout):
                result: object = ingest_video(item.entry, item.key, item.label, opts)
        except _VideoTimeout:
            result = f"timed out after {settings.task_timeout:.0f} s"
        yield item, result


@dataclass
class ShardResult:
    """What a shard task sends back: the shard's state, whether it was kept from an earlier run."""

    state: ShardState
    kept: bool
    seconds: float


def _ingested_isolated(items: tuple[PlanItem, ...], opts: IngestOptions, settings: TaskSettings,
                       ) -> Iterator[tuple[PlanItem, object]]:
    """Ingest ``items`` as Ray tasks on this node, yielding results in order, a few in flight."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True,
                                          _spill_on_unavailable=True)
    # max_retries: a worker or node lost is not the video's fault; a video that kills its decoder
    # three times is quarantined as such.
    task = ray.remote(num_cpus=1, max_retries=2)(ingest_video).options(scheduling_strategy=here)
    opts_ref = ray.put(opts)
    pending: collections.deque = collections.deque()
    todo = iter(items)
    for item in todo:
        pending.append((item, task.remote(item.entry, item.key, item.label, opts_ref)))
        if len(pending) >= settings.videos_in_flight:
            break
    while pending:
        item, ref = pending.popleft()
        try:
            result: object = ray.get(ref, timeout=settings.task_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            result = f"timed out after {settings.task_timeout:.0f} s"
        except ray.exceptions.RayError as exc:
            result = f"worker crashed while processing: {type(exc).__name__}"
        nxt = next(todo, None)
        if nxt is not None:
            pending.append((nxt, task.remote(nxt.entry, nxt.key, nxt.label, opts_ref)))
        yield item, result


def write_shard(spec: ShardSpec, opts: IngestOptions, settings: TaskSettings) -> ShardResult:
    """Publish shard ``spec`` (or find it already published) and return its state."""
    t0 = time.monotonic()
    members = spec.members_digest()
    old = read_state(settings.output, spec.name)
    if (old is not None and old.fingerprint == settings.fingerprint and old.members == members
            and (old.samples == 0 or verify_shard(settings.output, old, settings.verify))):
        return ShardResult(old, True, time.monotonic() - t0)
    writer = TarShardWriter(settings.output, spec.name)
    quarantined: list[dict] = []
    encodes: collections.Counter[str] = collections.Counter()
    dropped = 0.0
    try:
        ingested = _ingested_isolated if settings.isolate else _ingested_inline
        for item, result in ingested(spec.items, opts, settings):
            where = {"uri": item.entry.uri, "line": item.line, "key": item.key}
            if isinstance(result, str):
                quarantined.append(where | {"reason": result})
                continue
            assert isinstance(result, Ingested), type(result)
            for sample in result.samples:
                writer.add(sample)
                encodes[str(sample.meta.get("encode", ""))] += 1
            quarantined += [where | {"key": f["key"], "start": f["start"], "end": f["end"], "reason": f["reason"],
                                     "clip": True} for f in result.failed]
            dropped += result.dropped_seconds
        if writer.samples:
            nbytes, sha, etag = writer.publish()
        else:  # every video of the shard was quarantined: a state without a tar
            writer.abort()
            nbytes, sha, etag = 0, "", ""
    except BaseException:
        writer.abort()
        raise
    state = ShardState(spec.name, spec.split, writer.samples, nbytes, sha, settings.fingerprint, members,
                       videos=len(spec.items), quarantined=quarantined, etag=etag,
                       encodes={k: v for k, v in sorted(encodes.items()) if k}, dropped_seconds=round(dropped, 6))
    write_state(settings.output, state)
    return ShardResult(state, False, time.monotonic() - t0)
