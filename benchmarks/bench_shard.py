"""Sharding throughput: videos/s of ``pipeline.orchestration.sharding.shard`` with 1 and with 2 Ray workers.

One embedded Ray with 2 CPUs; each ingest task (probe, validate, transcode to H.264, checks)
takes one. **1 worker**: ``shard.max_in_flight = 1`` (one video at a time, so one worker busy);
**2 workers**: the job's default window (2 x CPUs in flight, Ray runs 2 at once). Same manifest,
a fresh output folder every run (deleted afterwards), runs interleaved; medians. Ray start-up is
not timed (one Ray for all runs). Figure: videos/s with 2 workers / with 1.

    python -m benchmarks.bench_shard                      # 12 synthetic videos 426x320, 96 frames
    python -m benchmarks.bench_shard --quick --keep DIR   # 6 tiny videos; DIR keeps the last shards
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE,
    RESULTS,
    command,
    figure,
    interleaved,
    load_avg,
    medians,
    paired_ratio,
    shard_videos,
    start_ray,
    synthetic_videos,
    write_result,
)

OUT = RESULTS / "sharding.json"


def timed_shard(manifest: Path, work: Path, max_in_flight: int, keep: Path | None) -> Callable[[], float]:
    def run() -> float:
        out = Path(tempfile.mkdtemp(prefix="shard_", dir=work))
        try:
            report = shard_videos(manifest, out, transcode=True, max_in_flight=max_in_flight)
            if report.samples != report.inputs:
                raise RuntimeError(f"{report.quarantined} of {report.inputs} videos quarantined: {report.reasons}")
            if keep is not None:
                shutil.rmtree(keep, ignore_errors=True)
                shutil.copytree(out, keep)
            return report.inputs / report.seconds
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return run


def _machine_line(load_before: list[float]) -> str:
    """What this run really had: the machine's cores and its load (other jobs share it)."""
    load = f"load {load_before[0]:.1f} at start, {load_avg()[0]:.1f} at end (1 min)" if load_before else "load unknown"
    return f"Ray given 2 CPUs on a {os.cpu_count()}-core machine, {load}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=12, help="videos in the manifest (a multiple of 6 classes)")
    p.add_argument("--video-frames", type=int, default=96)
    p.add_argument("--video-size", type=int, nargs=2, default=(320, 426), metavar=("H", "W"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--keep", default="", help="copy the last run's shards here (e.g. for bench_data --shards)")
    p.add_argument("--quick", action="store_true", help="6 videos of 64x48, 24 frames, 1 round (smoke test)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.videos, args.video_frames, args.video_size, args.reps = 6, 24, (48, 64), 1
    started, load_before = time.time(), load_avg()
    h, w = args.video_size
    manifest = synthetic_videos(CACHE / f"shard_{args.videos}v_{args.video_frames}f_{w}x{h}" / "videos",
                                args.videos // 6, args.video_frames, (h, w))
    work = Path(tempfile.mkdtemp(prefix="bench_shard_"))
    keep = Path(args.keep) if args.keep else None
    ray = start_ray(2)
    try:
        cases = {"1_worker": timed_shard(manifest, work, 1, None), "2_workers": timed_shard(manifest, work, 0, keep)}
        print(f"sharding {args.videos} videos ({w}x{h}, {args.video_frames} frames), 1 vs 2 Ray workers", flush=True)
        values = interleaved(cases, args.reps, warmup=0 if args.quick else 1)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    med = medians(values)
    figures = [figure("sharding: 2 Ray workers / 1 worker", med["2_workers"], med["1_worker"], "videos/s",
                      "the same job with one video in flight (shard.max_in_flight=1)",
                      detail=f"{args.videos} videos {w}x{h}x{args.video_frames}, transcode to H.264; "
                             f"{_machine_line(load_before)}",
                      ratio=paired_ratio(values, "2_workers", "1_worker"))]
    body = {"videos": args.videos, "video_frames": args.video_frames, "video_size_hw": [h, w], "ray_cpus": 2,
            "values": values, "medians": med, "figures": figures}
    result = write_result(Path(args.out), "sharding", command("benchmarks.bench_shard", argv), started, load_before, body)
    print(f"  {figures[0]['name']}: {figures[0]['ratio']:.2f}x ({med['2_workers']:.2f} vs {med['1_worker']:.2f} videos/s)")
    return result


if __name__ == "__main__":
    main()
