"""Sharding: the job as it is (shard tasks write their own shards) vs the design before 664b263 (the driver writes).

**new**: ``pipeline.orchestration.sharding.shard``: the driver plans in SQLite and runs one Ray
task per shard, which ingests its videos in its own process (each under the per-video alarm),
writes, hashes and publishes the tar and its state, and returns a small ``ShardResult``.
**old**: :func:`driver_writes`, a replica (in this file) of the design before commit 664b263: one
Ray task per video, every ``Sample`` (the transcoded bytes) ``ray.get`` back to the driver in plan
order with a window of 2 x CPUs, the driver writes each tar with ``TarShardWriter`` and then reads
it back to hash it, in one thread.

Same manifest, same work (transcode to H.264, ``videos_per_shard`` rows per shard in (split, key)
order), same Ray cluster: the local two-node cluster of ``cluster/local/up.sh``, started by this
benchmark on free ports and stopped by ``cluster/local/down.sh`` afterwards.

- **1 worker**: the 1+1-CPU cluster with one video at a time (new: ``max_in_flight = 1``,
  ``videos_in_flight = 1``; old: a window of 1).
- **2 workers**: the 1+1-CPU cluster, each design's defaults (new: 2 x CPUs shard tasks in flight;
  old: 2 x CPUs videos in flight).
- **4 workers**: a 2+2-CPU cluster, the defaults. This machine may have only 2 cores (the figure's
  detail says how many): 4 logical CPUs cannot run faster than 2 there.

Every (design, workers) run is a fresh driver process that connects to the cluster (so its peak
RSS, ``ru_maxrss`` read at its end, is its own), writes into a fresh folder (deleted afterwards),
and reports videos/s (planning included, connecting not), its peak RSS, and the bytes it
received from tasks: old, the pickled size of every Sample it got; new, the pickled size of
every ``ShardResult`` (counted by wrapping ``sharding._Results.add``, which receives each one).
Runs are interleaved (new and old in turn, per cluster), the first round is dropped; medians.
Figures: new / old videos/s at each worker count; old / new driver bytes received; old / new
driver peak RSS.

    python -m benchmarks.bench_shard                      # 24 synthetic videos 426x320, 48 and 96 frames
    python -m benchmarks.bench_shard --quick --keep DIR   # 6 tiny videos, embedded Ray; DIR keeps new's shards
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE,
    RESULTS,
    ROOT,
    command,
    figure,
    interleaved,
    load_avg,
    synthetic_videos,
    write_result,
)

OUT = RESULTS / "sharding.json"
UP, DOWN = ROOT / "cluster/local/up.sh", ROOT / "cluster/local/down.sh"
DESIGNS = ("old", "new")
MARK = "BENCH_SHARD_RESULT "


# ------------------------------------------------------------------------------------------------
# The old design, replicated


def driver_writes(manifest: str, output: str, videos_per_shard: int, window: int, opts: Any) -> dict[str, int]:
    """The sharding job as it was before commit 664b263 (``git show d722554:pipeline/orchestration/sharding.py``).

    Plan: read the whole manifest text, parse it into a list, give each row its key and sort by
    (split, key). Run: one Ray task per video (``pipeline.data.ingest.ingest``), at most ``window``
    in flight (0: 2 x cluster CPUs), each result ``ray.get`` to the driver in plan order. The
    driver writes the samples into tars with ``TarShardWriter``, ``videos_per_shard`` rows per shard
    (the old job closed shards by size; the rows per shard are the new job's, so both write the same
    shards), reads each published tar back to hash it (the old writer read its temporary file back
    before publishing it; today's writer also hashes while writing, a small extra cost here), then
    writes its state file, and at the end the index. Returns counts and the bytes received.
    """
    import ray

    from pipeline.core import io as sio
    from pipeline.data.ingest import ingest
    from pipeline.data.manifest import label_names, manifest_format, parse_manifest_lines
    from pipeline.data.shard_writer import (
        INDEX_NAME,
        ShardState,
        TarShardWriter,
        sample_key,
        sha256_of,
        shard_name,
        write_state,
    )
    from pipeline.orchestration.ray_train import forwarded_env

    rejects: list = []
    rows = parse_manifest_lines(sio.read_text(manifest).splitlines(), manifest_format(manifest), manifest, rejects)
    labels = label_names(e for _, e in rows)
    index = {name: i for i, name in enumerate(labels)}
    items = sorted(((e.split or "train", sample_key(e), e) for _, e in rows), key=lambda t: t[:2])
    task = ray.remote(num_cpus=1, max_retries=1)(ingest).options(runtime_env={"env_vars": forwarded_env()})
    window = window or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    opts_ref = ray.put(opts)

    def submit(item: tuple) -> Any:
        split, key, e = item
        return task.remote(e, key, index[e.label] if e.label is not None else None, opts_ref)

    todo, pending = iter(items), collections.deque()
    for item in todo:
        pending.append((item, submit(item)))
        if len(pending) >= window:
            break
    writer, split, number, rows_in, shards = None, None, 0, 0, []
    received = samples = 0

    def close() -> None:
        nbytes, _, _ = writer.publish()
        sha = sha256_of(sio.join(output, writer.name))  # the second read of the tar
        state = ShardState(writer.name, split, writer.samples, nbytes, sha, "old", "", videos=rows_in)
        write_state(output, state)
        shards.append(state.summary())

    while pending:
        item, ref = pending.popleft()
        result = ray.get(ref)
        received += len(pickle.dumps(result))
        nxt = next(todo, None)
        if nxt is not None:
            pending.append((nxt, submit(nxt)))
        if writer is None or item[0] != split or rows_in == videos_per_shard:
            if writer is not None:
                close()
            number = number + 1 if item[0] == split else 0
            split, rows_in = item[0], 0
            writer = TarShardWriter(output, shard_name(split, number))
        rows_in += 1
        if not isinstance(result, str):  # an Ingested: the old design had one sample per video
            for sample in result.samples:
                writer.add(sample)
                samples += 1
    if writer is not None:
        close()
    sio.write_text(sio.join(output, INDEX_NAME), json.dumps({"shards": shards, "labels": labels}, indent=1))
    return {"inputs": len(rows) + len(rejects), "samples": samples, "received": received, "results": len(items)}


def tasks_write(manifest: str, output: str, videos_per_shard: int, max_in_flight: int,
                videos_in_flight: int) -> dict[str, int]:
    """The job as it is, with the pickled size of every ``ShardResult`` the driver receives counted."""
    from pipeline.orchestration import sharding

    sizes: list[int] = []
    add = sharding._Results.add

    def counting_add(self: Any, result: Any) -> None:
        sizes.append(len(pickle.dumps(result)))
        add(self, result)

    sharding._Results.add = counting_add  # type: ignore[method-assign]
    cfg = sharding.ShardSection(manifest=manifest, output=output, videos_per_shard=videos_per_shard, transcode=True,
                                remux=False, max_in_flight=max_in_flight, videos_in_flight=videos_in_flight,
                                progress=False)
    _, report = sharding.shard(cfg)
    return {"inputs": report.inputs, "samples": report.samples, "received": sum(sizes), "results": len(sizes)}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker_ids() -> set[str] | None:
    """The cluster's Ray worker processes, from the state API (a cluster's dashboard; None without one)."""
    try:
        from ray.util.state import list_workers

        return {wk.worker_id for wk in list_workers(limit=10_000, raise_on_missing_output=False, timeout=10)
                if wk.worker_type == "WORKER"}
    except Exception as exc:  # noqa: BLE001 - a count for the record only
        print(f"worker list unavailable: {exc!r}"[:300], file=sys.stderr)
        return None


def child(spec: dict[str, Any]) -> None:
    """One run, in its own driver process: connect, run one design, print what it measured."""
    import ray

    ray.init(address=spec["address"], log_to_driver=False, configure_logging=False)
    before = _worker_ids() if spec["count_workers"] else None
    connected = _maxrss_mb()
    t0 = time.perf_counter()
    if spec["design"] == "new":
        out = tasks_write(spec["manifest"], spec["output"], spec["videos_per_shard"], spec["in_flight"],
                          spec["videos_in_flight"])
    else:
        from pipeline.data.ingest import IngestOptions

        out = driver_writes(spec["manifest"], spec["output"], spec["videos_per_shard"], spec["in_flight"],
                            IngestOptions(transcode=True, remux=False))
    seconds = time.perf_counter() - t0
    out.update(seconds=seconds, videos_per_s=out["inputs"] / seconds, peak_rss_mb=_maxrss_mb(),
               rss_connected_mb=connected, workers_started=None)
    after = _worker_ids() if before is not None else None
    if after is not None:
        out["workers_started"] = len(after - before)  # the worker processes this run made Ray start
    print(MARK + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------
# The parent: clusters, cases, rounds


class Cluster:
    """``cluster/local/up.sh`` on free ports with ``head + worker`` logical CPUs; ``down.sh`` on close."""

    def __init__(self, work: Path, head_cpus: int, worker_cpus: int) -> None:
        from tests.local_cluster import cluster_env

        ray_bin = str(Path(sys.executable).parent / "ray")
        self.env = cluster_env(work / f"cluster_{head_cpus}_{worker_cpus}", TUBELET_RAY=ray_bin, RAY_AUTH_MODE="token")
        self.env.update(TUBELET_CLUSTER_HEAD_CPUS=str(head_cpus), TUBELET_CLUSTER_WORKER_CPUS=str(worker_cpus))
        self.cpus = f"{head_cpus}+{worker_cpus}"
        try:
            subprocess.run(["bash", str(UP)], env=self.env, check=True, capture_output=True, text=True, timeout=300)
        except subprocess.CalledProcessError as exc:
            self.close()
            raise RuntimeError(f"cluster/local/up.sh failed: {(exc.stdout + exc.stderr)[-2000:]}") from None
        state = Path(self.env["TUBELET_CLUSTER_DIR"])
        exports = dict(ln.removeprefix("export ").split("=", 1) for ln in (state / "env").read_text().splitlines())
        self.address = exports["RAY_ADDRESS"]
        self.child_env = dict(self.env, **exports)

    def close(self) -> None:
        subprocess.run(["bash", str(DOWN)], env=self.env, capture_output=True, text=True, timeout=180)
        shutil.rmtree(self.env["TUBELET_CLUSTER_TMP"], ignore_errors=True)


class Embedded:
    """The quick mode's Ray: embedded in this process with 2 CPUs; the runs' drivers connect to it."""

    def __init__(self) -> None:
        import ray

        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ctx = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                       configure_logging=False)
        self.address, self.cpus = ctx.address_info["gcs_address"], "2 (embedded)"
        self.child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}

    def close(self) -> None:
        import ray

        ray.shutdown()


def run_case(ray_at: Any, design: str, workers: int, limit_one: bool, manifest: Path, work: Path,
             videos_per_shard: int, keep: Path | None, records: list[dict]) -> Callable[[], float]:
    def run() -> float:
        out = Path(tempfile.mkdtemp(prefix=f"{design}_{workers}_", dir=work))
        spec = {"address": ray_at.address, "design": design, "manifest": str(manifest), "output": str(out),
                "videos_per_shard": videos_per_shard, "in_flight": 1 if limit_one else 0,
                "videos_in_flight": 1 if limit_one else 2, "count_workers": isinstance(ray_at, Cluster)}
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_shard", "--child", json.dumps(spec)],
                                  cwd=ROOT, env=ray_at.child_env, capture_output=True, text=True, timeout=900)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{design} with {workers} workers failed (exit {proc.returncode}):\n"
                                   f"{(proc.stdout + proc.stderr)[-3000:]}")
            rec = json.loads(lines[-1].removeprefix(MARK))
            if rec["samples"] != rec["inputs"]:
                raise RuntimeError(f"{design}: {rec['inputs'] - rec['samples']} of {rec['inputs']} videos quarantined")
            records.append(rec)
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(out, keep)
            return rec["videos_per_s"]
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return run


def make_manifest(videos: int, frame_counts: list[int], size: tuple[int, int]) -> Path:
    """``videos`` synthetic videos (6 classes), split evenly between the frame counts; one manifest."""
    h, w = size
    per_set = videos // len(frame_counts)
    lines: list[str] = []
    for frames in frame_counts:
        m = synthetic_videos(CACHE / f"shard_{per_set}v_{frames}f_{w}x{h}" / "videos", per_set // 6, frames, (h, w))
        rows = m.read_text().splitlines()
        lines += rows[1:] if lines else rows
    if len(frame_counts) == 1:
        return m
    path = CACHE / f"shard_{videos}v_{'_'.join(map(str, frame_counts))}f_{w}x{h}.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _machine_line(load_before: list[float]) -> str:
    load = f"load {load_before[0]:.1f} at start, {load_avg()[0]:.1f} at end (1 min)" if load_before else "load unknown"
    return f"{os.cpu_count()}-core machine, {load}"


def _paired(records: dict[str, list[dict]], a: str, b: str, field: str) -> list[float]:
    return [x[field] / y[field] for x, y in zip(records[a], records[b])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=24, help="videos in the manifest (6 classes x frame counts)")
    p.add_argument("--video-frames", type=int, nargs="+", default=[48, 96],
                   help="the videos are split evenly between these frame counts")
    p.add_argument("--video-size", type=int, nargs=2, default=(320, 426), metavar=("H", "W"))
    p.add_argument("--videos-per-shard", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], choices=[1, 2, 4])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--keep", default="", help="copy the last new-design shards here (e.g. for bench_data --shards)")
    p.add_argument("--quick", action="store_true",
                   help="6 videos of 64x48, 24 frames, 1 and 2 workers on an embedded 2-CPU Ray, 1 round (smoke)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return {}
    if args.quick:
        args.videos, args.video_frames, args.video_size, args.reps = 6, [24], (48, 64), 1
        args.workers = [w for w in args.workers if w <= 2]
    warmup = 0 if args.quick else 1
    started, load_before = time.time(), load_avg()
    h, w = args.video_size
    manifest = make_manifest(args.videos, args.video_frames, (h, w))
    work = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    keep = Path(args.keep) if args.keep else None
    keep_from = 2 if 2 in args.workers else args.workers[-1]
    # which Ray each worker count runs on: (head, worker) CPUs of a local cluster, or the embedded one
    groups: dict[Any, list[int]] = {}
    for n in args.workers:
        groups.setdefault("embedded" if args.quick else (2, 2) if n == 4 else (1, 1), []).append(n)
    raw: dict[str, list[dict]] = {}
    values: dict[str, list[float]] = {}
    clusters: dict[str, str] = {}
    print(f"sharding {args.videos} videos ({w}x{h}, {args.video_frames} frames, {args.videos_per_shard} per shard), "
          f"new vs old design, workers {args.workers}", flush=True)
    try:
        for group, counts in groups.items():
            ray_at = Embedded() if group == "embedded" else Cluster(work, *group)
            try:
                cases = {}
                for n in counts:
                    clusters[f"{n}_workers"] = ray_at.cpus
                    for design in DESIGNS:
                        name = f"{design}_{n}w"
                        raw[name] = []
                        cases[name] = run_case(ray_at, design, n, n == 1, manifest, work, args.videos_per_shard,
                                               keep if (design == "new" and n == keep_from) else None, raw[name])
                print(f" Ray CPUs {ray_at.cpus}: {', '.join(cases)}", flush=True)
                values.update(interleaved(cases, args.reps, warmup=warmup))
            finally:
                ray_at.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    records = {k: v[warmup:] for k, v in raw.items()}
    med = {k: {f: statistics.median(r[f] for r in recs) for f in ("videos_per_s", "peak_rss_mb", "rss_connected_mb",
                                                                    "received", "results")}
           for k, recs in records.items()}
    machine = _machine_line(load_before)
    base = (f"{args.videos} videos {w}x{h}x{'/'.join(map(str, args.video_frames))} frames, transcode to H.264, "
            f"{args.videos_per_shard} per shard")
    figures = []
    for n in args.workers:
        new, old = f"new_{n}w", f"old_{n}w"
        how = "one video at a time" if n == 1 else "each design's default window"
        figures.append(figure(
            f"sharding, {n} worker{'s' * (n > 1)}: shard tasks write / driver writes (design before 664b263)",
            med[new]["videos_per_s"], med[old]["videos_per_s"], "videos/s",
            "the old design (per-video tasks, every Sample to the driver, driver writes and re-reads each tar), "
            "same cluster, interleaved",
            detail=f"{base}; Ray CPUs {clusters[f'{n}_workers']}, {how}; {machine}",
            ratio=statistics.median(_paired(records, new, old, "videos_per_s"))))
    all_new = [r for n in args.workers for r in records[f"new_{n}w"]]
    all_old = [r for n in args.workers for r in records[f"old_{n}w"]]
    figures.append(figure(
        "sharding: bytes received by the driver, driver writes / shard tasks write",
        statistics.median(r["received"] for r in all_new), statistics.median(r["received"] for r in all_old),
        "bytes per job (ratio = baseline / ours)", "the old design: pickled Samples (the transcoded videos)",
        detail=f"{base}; new: pickled ShardResults ({med[f'new_{args.workers[-1]}w']['results']:.0f} per job), "
               f"old: pickled Samples ({med[f'old_{args.workers[-1]}w']['results']:.0f}); "
               "the same at every worker count",
        ratio=statistics.median(o["received"] / n["received"] for o, n in zip(all_old, all_new))))
    rss = "; ".join(f"{n}w new {med[f'new_{n}w']['peak_rss_mb']:.0f} / old {med[f'old_{n}w']['peak_rss_mb']:.0f} MB"
                    for n in args.workers)
    figures.append(figure(
        "sharding: driver peak RSS, driver writes / shard tasks write",
        statistics.median(r["peak_rss_mb"] for r in all_new), statistics.median(r["peak_rss_mb"] for r in all_old),
        "MB (ratio = baseline / ours)", "the old design, same runs",
        detail=f"{base}; ru_maxrss of each run's own driver process (fresh), all worker counts pooled ({rss}); "
               "after connecting to Ray, before the job: "
               f"new {statistics.median(r['rss_connected_mb'] for r in all_new):.0f} / "
               f"old {statistics.median(r['rss_connected_mb'] for r in all_old):.0f} MB",
        ratio=statistics.median(o["peak_rss_mb"] / n["peak_rss_mb"] for o, n in zip(all_old, all_new))))
    body = {"videos": args.videos, "video_frames": args.video_frames, "video_size_hw": [h, w],
            "videos_per_shard": args.videos_per_shard, "workers": args.workers, "ray_cpus": clusters,
            "ray": "embedded, 2 CPUs" if args.quick else "cluster/local/up.sh two-node cluster (head+worker CPUs)",
            "values": values, "medians": {k: v["videos_per_s"] for k, v in med.items()}, "medians_all": med,
            "runs": records, "figures": figures}
    result = write_result(Path(args.out), "sharding", command("benchmarks.bench_shard", argv), started, load_before,
                          body)
    for f in figures:
        print(f"  {f['name']}: {f['ratio']:.2f}x ({f['ours']:.4g} vs {f['baseline']:.4g} {f['unit']})")
    return result


if __name__ == "__main__":
    main()
