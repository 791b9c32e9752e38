"""Where a training job's start-up goes, from the command to its first optimizer step.

``python -m jobs.pretrain`` as a user runs it (its own embedded Ray, 2 Ray Train workers, ZeRO-2,
a tiny model on tiny shards, 2 steps), each launch a fresh run name in one MLflow SQLite
database. Every launch logs its start-up clock (``startup/<phase>_s``: Ray up, Ray Train's
controller and worker group up, engine built, MLflow run started, first step done; see
:class:`pipeline.train.meter.StartupClock`); the benchmark reads those from MLflow and times the
whole command (Python start and imports, the exit, Ray's shutdown).

Cases, interleaved round by round:

- ``tubelet``: as shipped: the embedded Ray runs without Ray Train's preemption watcher and
  metrics export (``pipeline.orchestration.ray_train.EMBEDDED_RAY_ENV``), and the controller
  without the services that have nothing to do (``ray_train.idle_services``: the dataset
  manager without Ray Datasets, the placement-group cleaner without a dashboard);
- ``ray-train-defaults`` (baseline): the same command with all of them set back to Ray Train's
  defaults.

The ratio is baseline / ours for the time to the first step (> 1: ours starts sooner); the phase
medians of both cases are in ``phases``.

    python -m benchmarks.bench_startup               # ~8 min on 2 cores (3 rounds after a warm-up)
    python -m benchmarks.bench_startup --quick       # smoke test: one round, no warm-up
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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
    paired_ratio,
    shard_videos,
    start_ray,
    synthetic_videos,
    write_result,
)

OUT = RESULTS / "startup.json"
TINY = ["model.num_frames=4", "model.img_size=32", "data.sampling_rate=2", "data.batch_size=2",
        "data.repeated_aug=1", "data.num_workers=0", "train.steps=2", "train.checkpoint_every=0",
        "train.log_every=1", "train.image_every=0", "train.export=false", "deepspeed.zero_stage=2",
        "tracking.system_metrics=false", "scaling.num_workers=2", "scaling.cpus_per_worker=1"]
DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1", "RAY_TRAIN_METRICS_ENABLED": "1",
            "TUBELET_RAY_TRAIN_SERVICES": "all"}


def make_shards(root: Path) -> Path:
    """Tiny shards (rendered and sharded once, cached)."""
    out = root / "shards"
    if not (out / "index.json").exists():
        ray = start_ray(num_cpus=2)
        try:
            shard_videos(synthetic_videos(root / "videos", num_per_class=2, frames=12, size=(48, 48), classes=4), out,
                         transcode=False)
        finally:
            ray.shutdown()
    return out


def launch(shards: Path, work: Path, extra_env: dict[str, str]) -> dict[str, float]:
    """One ``python -m jobs.pretrain``: its wall time and the start-up clock it logged."""
    from mlflow import MlflowClient

    name, tracking = f"startup-{uuid.uuid4().hex[:8]}", f"sqlite:///{work / 'mlflow.db'}"
    sets = [f"data.shards={shards}", f"run.output={work / 'runs'}", f"run.name={name}",
            f"tracking.tracking_uri={tracking}", *TINY]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in DEFAULTS}
    env.update(extra_env)
    t0 = time.time()
    job = subprocess.run([sys.executable, "-m", "jobs.pretrain", "--config", "pretrain/demo",
                          *[a for s in sets for a in ("--set", s)]], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    wall = time.time() - t0
    if job.returncode != 0:
        raise SystemExit(f"jobs.pretrain failed:\n{(job.stdout + job.stderr)[-4000:]}")
    client = MlflowClient(tracking)
    run = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                             filter_string=f"attributes.run_name = '{name}'")[0]
    clock = {k.removeprefix("startup/").removesuffix("_s"): v for k, v in run.data.metrics.items()
             if k.startswith("startup/")}
    return {**clock, "command": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, no warm-up (smoke test)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    started, before = time.time(), load_avg()
    reps, warmup = (1, 0) if args.quick else (args.reps, 1)
    shards = make_shards(CACHE / "startup")
    clocks: dict[str, list[dict[str, float]]] = {"tubelet": [], "ray-train-defaults": []}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_experiments()  # its schema, before any case

        def case(name: str, env: dict[str, str]) -> Any:
            def run() -> float:
                clock = launch(shards, work, env)
                clocks[name].append(clock)
                return clock["total"]
            return run

        totals = interleaved({"tubelet": case("tubelet", {}), "ray-train-defaults": case("ray-train-defaults", DEFAULTS)},
                             reps=reps, warmup=warmup)
    kept = {name: runs[warmup:] for name, runs in clocks.items()}
    phases = {name: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
              for name, runs in kept.items()}
    ours, base = statistics.median(totals["tubelet"]), statistics.median(totals["ray-train-defaults"])
    figures = [figure("job start-up to the first step (jobs.pretrain, 2 workers, embedded Ray)", ours, base, "s",
                      "Ray Train's defaults (preemption watcher, metrics export, dataset manager, PG cleaner)",
                      "time from fit() to the first optimizer step; ratio = baseline / ours (> 1: ours sooner)",
                      ratio=1 / paired_ratio(totals, "tubelet", "ray-train-defaults"))]
    for name, p in phases.items():
        print(f"{name:20s} " + "  ".join(f"{k} {v:.1f}s" for k, v in p.items()))
    return write_result(args.out, "startup", command("benchmarks.bench_startup", argv), started, before,
                        {"reps": reps, "warmup": warmup, "phases": phases, "totals": totals, "figures": figures,
                         "note": "phases are medians of each phase; 'command' is the whole command's wall time"})


if __name__ == "__main__":
    main()
