"""Sharding plan: a 1M-row manifest planned in SQLite (the job as it is) vs in lists (the design before 664b263).

No video is read: the manifest is synthetic (``uri,label,split`` rows naming files that need not
exist, labels from 400 classes, splits train/val/test 80/10/10), written once and cached under
``benchmarks/results/tmp``.

- **new**: ``pipeline.data.shard_plan.ShardPlan(manifest, "train", videos_per_shard)`` (the
  manifest streamed into a temporary SQLite database), then every shard of ``plan.shards()`` with
  its ``members_digest()`` (what the driver submits and each shard task computes), then ``close()``.
- **old**: :func:`old_plan`, a replica (in this file) of ``read_plan`` before commit 664b263: the
  whole manifest read as one string, ``parse_manifest_lines`` into a list, the label names, a
  ``PlanItem`` per row, sorted by (split, key).

Each run is a fresh process (``--child``): seconds of the planning, and its peak RSS
(``ru_maxrss`` at its end; the RSS after imports, before planning, is recorded too). Runs are
interleaved, the first round dropped (not with ``--quick``); medians. Figures: old / new seconds,
old / new peak RSS.

    python -m benchmarks.bench_shard_plan                 # 1,000,000 rows, 128 per shard
    python -m benchmarks.bench_shard_plan --quick         # 20,000 rows, 1 round (smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, RESULTS, ROOT, command, figure, interleaved, load_avg, write_result

OUT = RESULTS / "shard_plan.json"
MARK = "BENCH_SHARD_PLAN_RESULT "
CLASSES, SPLITS = 400, (("train", 0.8), ("val", 0.1), ("test", 0.1))


def make_manifest(rows: int, seed: int = 0) -> Path:
    """``rows`` synthetic manifest rows (written once per size; a rerun reuses the file)."""
    path = CACHE / f"shard_plan_{rows}.csv"
    if path.exists():
        return path
    rng = random.Random(seed)
    labels = [f"class_{i:03d}" for i in range(CLASSES)]
    names, weights = zip(*SPLITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        fh.write("uri,label,split\n")
        for i in range(rows):
            label = labels[rng.randrange(CLASSES)]
            split = rng.choices(names, weights)[0]
            uri = f"s3://videos/crawl/{label}/{i // 1000:04d}/{rng.getrandbits(64):016x}_{i:08d}.mp4"
            fh.write(f"{uri},{label},{split}\n")
    tmp.rename(path)
    return path


# ------------------------------------------------------------------------------------------------
# The two plans


@dataclass
class OldPlanItem:  # pipeline.orchestration.sharding.PlanItem before 664b263 (a plain dataclass)
    line: int
    entry: Any
    key: str
    split: str
    label: int | None


def old_plan(manifest: str, default_split: str) -> dict[str, int]:
    """``read_plan`` as it was before commit 664b263 (``git show d722554:pipeline/orchestration/sharding.py``):
    the whole text in memory, every row parsed into a list, one item per row, sorted in memory."""
    from pipeline.core import io as sio
    from pipeline.data.manifest import label_names, manifest_format, parse_manifest_lines
    from pipeline.data.shard_writer import sample_key

    text = sio.read_text(manifest)
    rejects: list = []
    rows = parse_manifest_lines(text.splitlines(), manifest_format(manifest), manifest, rejects)
    labels = label_names(e for _, e in rows)
    index = {name: i for i, name in enumerate(labels)}
    items = [OldPlanItem(line, e, sample_key(e), e.split or default_split,
                         index[e.label] if e.label is not None else None) for line, e in rows]
    items.sort(key=lambda it: (it.split, it.key))
    return {"rows": len(items), "rejects": len(rejects), "labels": len(labels), "shards": 0, "db_mb": 0.0}


def new_plan(manifest: str, default_split: str, videos_per_shard: int) -> dict[str, Any]:
    """The plan as the job makes it now, and every shard of it with its members' digest."""
    from pipeline.data.shard_plan import ShardPlan

    with ShardPlan(manifest, default_split, videos_per_shard) as plan:
        shards = 0
        for spec in plan.shards():
            spec.members_digest()
            shards += 1
        db_mb = sum(p.stat().st_size for p in Path(plan.workdir).iterdir()) / 1e6
        return {"rows": plan.num_rows, "rejects": plan.num_rejects, "labels": len(plan.labels), "shards": shards,
                "db_mb": db_mb}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(design: str, manifest: str, videos_per_shard: int) -> None:
    """One run in its own process: import what the plan needs, then plan, and print the figures."""
    import pipeline.data.manifest  # noqa: F401 - imports are not the plan's memory
    import pipeline.data.shard_plan  # noqa: F401
    import pipeline.data.shard_writer  # noqa: F401

    before = _maxrss_mb()
    t0 = time.perf_counter()
    out = new_plan(manifest, "train", videos_per_shard) if design == "new" else old_plan(manifest, "train")
    out.update(seconds=time.perf_counter() - t0, peak_rss_mb=_maxrss_mb(), rss_before_mb=before)
    print(MARK + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------------


def run_case(design: str, manifest: Path, videos_per_shard: int, records: list[dict]):
    def run() -> float:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_shard_plan", "--child", design,
                               "--manifest", str(manifest), "--videos-per-shard", str(videos_per_shard)],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{design} plan failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
        rec = json.loads(lines[-1].removeprefix(MARK))
        records.append(rec)
        return rec["seconds"]
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--videos-per-shard", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="20,000 rows, 1 round (smoke test)")
    p.add_argument("--child", default="", choices=["", "new", "old"], help=argparse.SUPPRESS)
    p.add_argument("--manifest", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.manifest, args.videos_per_shard)
        return {}
    if args.quick:
        args.rows, args.reps = 20_000, 1
    warmup = 0 if args.quick else 1
    started, load_before = time.time(), load_avg()
    manifest = make_manifest(args.rows)
    print(f"planning {args.rows:,} manifest rows ({CLASSES} labels, 3 splits, {args.videos_per_shard} per shard): "
          "SQLite plan vs the lists before 664b263", flush=True)
    raw: dict[str, list[dict]] = {"old": [], "new": []}
    cases = {d: run_case(d, manifest, args.videos_per_shard, raw[d]) for d in raw}
    values = interleaved(cases, args.reps, warmup=warmup)
    runs = {k: v[warmup:] for k, v in raw.items()}
    med = {k: {f: statistics.median(r[f] for r in recs) for f in recs[0]} for k, recs in runs.items()}
    if med["new"]["rows"] != med["old"]["rows"] or med["new"]["rows"] != args.rows:
        raise RuntimeError(f"the plans disagree: {med}")
    load = f"load {load_before[0]:.1f} at start, {load_avg()[0]:.1f} at end (1 min)" if load_before else "load unknown"
    base = (f"{args.rows:,} rows, {CLASSES} labels, 3 splits, {med['new']['shards']:.0f} shards of "
            f"{args.videos_per_shard}; a fresh process per run; {os.cpu_count()}-core machine, {load}")
    figures = [
        figure("shard planning: seconds, lists (design before 664b263) / SQLite plan + every shard's digest",
               med["new"]["seconds"], med["old"]["seconds"], "s (ratio = baseline / ours)",
               "read_plan before 664b263 (whole text, parsed list, sorted items), replicated in the benchmark",
               detail=f"{base}; ours includes iterating every shard and its members_digest(), the old one has no "
                      f"shard step; SQLite file {med['new']['db_mb']:.0f} MB (deleted at close)",
               ratio=statistics.median(o["seconds"] / n["seconds"] for o, n in zip(runs["old"], runs["new"]))),
        figure("shard planning: driver peak RSS, lists / SQLite plan",
               med["new"]["peak_rss_mb"], med["old"]["peak_rss_mb"], "MB (ratio = baseline / ours)",
               "read_plan before 664b263, same manifest, same rounds",
               detail=f"{base}; ru_maxrss at the end of each run; after imports, before planning: "
                      f"{med['new']['rss_before_mb']:.0f} MB (new) / {med['old']['rss_before_mb']:.0f} MB (old)",
               ratio=statistics.median(o["peak_rss_mb"] / n["peak_rss_mb"] for o, n in zip(runs["old"], runs["new"]))),
    ]
    body = {"rows": args.rows, "classes": CLASSES, "splits": dict(SPLITS), "videos_per_shard": args.videos_per_shard,
            "manifest_mb": round(manifest.stat().st_size / 1e6, 1), "values": values,
            "medians": {k: v["seconds"] for k, v in med.items()}, "medians_all": med, "runs": runs,
            "figures": figures}
    result = write_result(Path(args.out), "shard_plan", command("benchmarks.bench_shard_plan", argv), started,
                          load_before, body)
    for f in figures:
        print(f"  {f['name']}: {f['ratio']:.2f}x ({f['ours']:.4g} vs {f['baseline']:.4g} {f['unit']})")
    return result


if __name__ == "__main__":
    main()
