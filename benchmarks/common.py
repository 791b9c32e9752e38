"""What every benchmark shares: machine facts, load, interleaved repetitions, the results JSON,
and the synthetic video set (rendered and sharded once, cached under ``benchmarks/results/tmp``).

Every benchmark JSON carries a ``figures`` list: one entry per ratio, measured in one run against a
baseline on the same machine and data::

    {"name", "ratio", "ours", "baseline", "unit", "baseline_name", "detail"}

``ratio`` is the median over rounds of the per-round ratio (ours and baseline measured in the same
round, see :func:`paired_ratio`); ``ours`` and ``baseline`` are the medians. It is stated so that > 1 favours ours (ours / baseline for rates, baseline / ours for
times), unless ``detail`` says otherwise (the ZeRO memory ratios are measured / estimated).
``benchmarks.report`` turns them into one Markdown table and bar plots.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "tmp"  # gitignored: rendered videos and shards reused between runs


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    import torch

    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "host": platform.node()}


def command(module: str, argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", module, *map(shlex.quote, args)])


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def figure(name: str, ours: float, baseline: float, unit: str, baseline_name: str, detail: str = "",
           ratio: float | None = None) -> dict[str, Any]:
    """One row of the combined table; ``ratio`` defaults to ours / baseline."""
    return {"name": name, "ratio": ratio if ratio is not None else ours / baseline, "ours": ours,
            "baseline": baseline, "unit": unit, "baseline_name": baseline_name, "detail": detail}


def write_result(path: Path, name: str, cmd: str, started: float, load_before: list[float],
                 body: dict[str, Any]) -> dict[str, Any]:
    result = {"benchmark": name, "date": now(), "command": cmd, "wall_s": round(time.time() - started, 1),
              "load_avg_before": load_before, "load_avg_after": load_avg(), "machine": machine(), **body}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def interleaved(cases: dict[str, Callable[[], float]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every case once per repetition, in turn, so that load from other processes on a shared
    machine hits them alike; the first ``warmup`` rounds are dropped. Returns every kept value."""
    out: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(warmup + reps):
        for name, fn in cases.items():
            value = fn()
            if i >= warmup:
                out[name].append(value)
        print(f"  round {i + 1}/{warmup + reps}: " + ", ".join(f"{k} {v[-1]:.3g}" for k, v in out.items() if v),
              flush=True)
    return out


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in values.items()}


def paired_ratio(values: dict[str, list[float]], ours: str, baseline: str, scale: float = 1.0) -> float:
    """Median over rounds of ours / (baseline x scale) measured in the same round: a busy spell
    that slows one round slows both sides of its ratio."""
    return statistics.median(a / (b * scale) for a, b in zip(values[ours], values[baseline]))


# ------------------------------------------------------------------------------------------------
# The synthetic video set


def synthetic_videos(root: Path, num_per_class: int, frames: int, size: tuple[int, int], classes: int = 6,
                     workers: int = 2) -> Path:
    """Render (once; a rerun verifies hashes) ``classes x num_per_class`` videos; returns the manifest."""
    from pipeline.data.synthetic import DEFAULT_CLASSES, generate_synthetic

    generate_synthetic(root, num_per_class=num_per_class, classes=DEFAULT_CLASSES[:classes], frames=frames,
                       size=size, fps=30.0, splits={"train": 1.0}, workers=workers)
    return root / "manifest.csv"


def start_ray(num_cpus: int) -> Any:
    """An embedded Ray of its own (never a cluster recorded on the machine)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return ray


def shard_videos(manifest: Path, output: Path, transcode: bool, max_in_flight: int = 0,
                 videos_per_shard: int = 8, remux: bool = False) -> Any:
    """``pipeline.orchestration.sharding.shard`` on ``manifest`` into ``output`` (Ray must be running)."""
    from pipeline.orchestration.sharding import ShardSection, shard

    cfg = ShardSection(manifest=str(manifest), output=str(output), videos_per_shard=videos_per_shard,
                       transcode=transcode, remux=remux, max_in_flight=max_in_flight, progress=False)
    _, report = shard(cfg)
    return report
