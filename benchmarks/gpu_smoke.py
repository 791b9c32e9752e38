"""The GPU check: pre-train, fine-tune, evaluate and extract through the real jobs on 1..N GPUs.

    make gpu-smoke                      # on a GPU node: every visible GPU, ViT-S 16x224, bf16, ZeRO-2
    python -m benchmarks.gpu_smoke --cpu --out /tmp/smoke.json   # the same code on CPU (CI)

Each stage runs as its job does (Ray Train workers, DeepSpeed, MLflow in a SQLite store under
``--work``) on synthetic motion shards made first (or ``--shards``). Then, from what the jobs
logged to MLflow, it asserts what a GPU run must have and a CPU run cannot show:

- every training process group used NCCL (``dist_backend`` tag) and every rank trained on
  ``cuda`` (``device`` tag; the loops check at their first step that every parameter and every
  batch tensor lives on that device, and fail otherwise);
- evaluation scored every video and extraction wrote one row per video.

It reports per stage wall seconds, clips/s, MFU (achieved model FLOP/s over the GPUs' dense
bf16 peak), peak GPU memory and the data-wait fraction, as JSON (``--out``; on a GPU the
default is ``benchmarks/results/gpu_smoke.json``). ``--cpu`` runs a tiny model in fp32 over
gloo and checks the same things with ``gloo`` / ``cpu`` expected.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "gpu_smoke.json"


@dataclass(frozen=True)
class Shape:
    """Model and clip of one smoke flavour."""

    model: str
    frames: int
    size: int
    sampling_rate: int
    precision: str
    batch: int
    video_size: int  # synthetic video side (the crop needs at least the input size)
    video_frames: int


GPU = Shape("vit_s", 16, 224, 2, "bf16", 8, 256, 32)
CPU = Shape("vit_tiny", 4, 32, 2, "fp32", 4, 48, 16)


def _size(s: Shape) -> list[str]:
    return [f"model.name={s.model}", f"model.num_frames={s.frames}", f"model.img_size={s.size}", f"data.sampling_rate={s.sampling_rate}"]


def make_shards(work: Path, s: Shape) -> Path:
    """Labelled synthetic motion shards (train / val) big enough for the clip shape."""
    from pipeline.data.synthetic import generate_synthetic
    from pipeline.orchestration.sharding import ShardSection, shard

    entries = generate_synthetic(work / "synthetic", num_per_class=8, classes=["left", "right", "up", "down"],
                                 frames=s.video_frames, size=(s.video_size, s.video_size),
                                 splits={"train": 0.75, "val": 0.25}, workers=min(8, os.cpu_count() or 1))
    manifest = work / "manifest.csv"
    manifest.write_text("\n".join(["uri,label,split"] + [f"{e.uri},{e.label},{e.split}" for e in entries]) + "\n")
    out = work / "shards"
    shard(ShardSection(manifest=str(manifest), output=str(out), max_short_side=max(s.video_size, 64),
                       videos_per_shard=4, progress=False))
    return out


def _job(module: str, config: str, overrides: list[str]) -> float:
    """Run ``jobs.<module>`` through its command-line entry point; returns wall seconds."""
    import importlib

    from jobs._cli import job_main

    mod = importlib.import_module(f"jobs.{module}")
    cls = {"pretrain": "PretrainConfig", "finetune": "FinetuneConfig", "evaluate": "EvaluateConfig",
           "extract": "ExtractConfig"}[module]
    argv = ["--config", config] + [a for o in overrides for a in ("--set", o)]
    t0 = time.monotonic()
    rc = job_main(getattr(mod, cls), mod.run, argv, prog=f"jobs.{module}", default_config=config)
    if rc != 0:
        raise SystemExit(f"gpu-smoke: jobs.{module} failed (exit {rc})")
    return time.monotonic() - t0


def _runs(tracking_uri: str) -> dict[str, Any]:
    """The newest MLflow run of each stage: tags and the last value of each metric."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    out: dict[str, Any] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]):
            stage = run.data.tags.get("stage")
            if stage and stage not in out:
                out[stage] = {"tags": run.data.tags, "metrics": run.data.metrics, "status": run.info.status}
    return out


def _peak_flops_per_gpu() -> float:
    import torch

    from pipeline.infra.capacity import GPU_PEAK_TFLOPS

    name = torch.cuda.get_device_name(0).lower()
    kind = next((k for k in GPU_PEAK_TFLOPS if k in name), "")
    return GPU_PEAK_TFLOPS[kind] * 1e12 if kind else float("nan")


def stage_figures(run: dict[str, Any], world: int, peak: float, seconds: float) -> dict[str, Any]:
    m = run["metrics"]
    flops = m.get("model_flops_per_s")
    return {"wall_s": round(seconds, 1), "clips_per_s": m.get("clips_per_s"),
            "mfu": (flops / (world * peak)) if flops and peak == peak else None,
            "peak_gpu_mem_gib": m.get("gpu_mem_peak_gib"), "data_wait_frac": m.get("data_wait_frac"),
            "dist_backend": run["tags"].get("dist_backend"), "device": run["tags"].get("device"),
            "status": run["status"]}


def check(figures: dict[str, Any], want_backend: str, want_device: str) -> list[str]:
    """What must hold; returns the failures (empty when the smoke passed)."""
    bad = []
    for stage in ("pretrain", "finetune"):
        f = figures.get(stage, {})
        if f.get("dist_backend") != want_backend:
            bad.append(f"{stage}: process group backend {f.get('dist_backend')!r}, expected {want_backend!r}")
        if not str(f.get("device", "")).startswith(want_device):
            bad.append(f"{stage}: trained on {f.get('device')!r}, expected {want_device}")
    for stage in ("pretrain", "finetune", "evaluate"):
        if figures.get(stage, {}).get("status") != "FINISHED":
            bad.append(f"{stage}: MLflow run {figures.get(stage, {}).get('status')!r}")
    return bad


def run_smoke(work: Path, cpu: bool, gpus: int, steps: int, shards: Path | None) -> dict[str, Any]:
    """All four stages; returns the figures and the checks."""
    import ray
    import torch

    shape = CPU if cpu else GPU
    world = 2 if cpu else gpus
    work.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():  # one Ray for every stage (each job reuses it)
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), num_gpus=0 if cpu else gpus,
                 include_dashboard=False, log_to_driver=True)
    data = shards or make_shards(work, shape)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    common = [f"data.shards={data}", f"tracking.tracking_uri={tracking}", "tracking.system_metrics=false",
              f"scaling.num_workers={world}", f"scaling.use_gpu={str(not cpu).lower()}", *_size(shape)]
    train = [f"train.steps={steps}", f"train.log_every={max(1, steps // 2)}", f"train.checkpoint_every={steps}",
             f"deepspeed.precision={shape.precision}", "deepspeed.zero_stage=2", "model.attn_impl=sdpa",
             f"data.batch_size={shape.batch}", "data.repeated_aug=2", f"data.num_workers={0 if cpu else 4}",
             f"scaling.cpus_per_worker={1 if cpu else 5}", "optim.warmup_steps=2"]
    seconds = {
        "pretrain": _job("pretrain", "pretrain/demo", common + train + [
            f"run.output={work / 'runs'}", "run.name=smoke-pretrain", "train.image_every=0", "data.split=train"]),
    }
    init = work / "runs" / "smoke-pretrain" / "export" / "pretrain_fp32.pt"
    seconds["finetune"] = _job("finetune", "finetune/demo", common + train + [
        f"run.output={work / 'runs'}", "run.name=smoke-finetune", f"model.init={init}", "model.num_classes=4",
        "tracking.registered_model=", "data.scales=[1.0]"])
    evaluation = [f"model.init={work / 'runs' / 'smoke-finetune'}", "data.split=val", "data.batch_size=2",
                  "data.num_workers=0", "data.test_num_clips=2", "data.test_num_crops=1"]
    seconds["evaluate"] = _job("evaluate", "evaluate/demo", common + evaluation + [f"run.output={work / 'evaluate'}"])
    seconds["extract"] = _job("extract", "extract/demo", common + evaluation + [f"run.output={work / 'extract'}"])
    runs = _runs(tracking)
    peak = float("nan") if cpu else _peak_flops_per_gpu()
    figures = {stage: stage_figures(runs[stage], world, peak, seconds[stage]) for stage in ("pretrain", "finetune")
               if stage in runs}
    report = json.loads((work / "evaluate" / "report.json").read_text())
    manifest = json.loads((work / "extract" / "manifest.json").read_text())
    figures["evaluate"] = {"wall_s": round(seconds["evaluate"], 1), "videos": report["num_videos"],
                           "views_per_video": report["views_per_video"], "top1": report["top1"],
                           "status": runs.get("evaluate", {}).get("status")}
    figures["extract"] = {"wall_s": round(seconds["extract"], 1), "rows": manifest["rows"], "dim": manifest["dim"]}
    failures = check(figures, "gloo" if cpu else "nccl", "cpu" if cpu else "cuda")
    if figures["extract"]["rows"] != report["num_videos"]:
        failures.append(f"extract wrote {figures['extract']['rows']} rows for {report['num_videos']} videos")
    return {
        "benchmark": "gpu_smoke", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python -m benchmarks.gpu_smoke", *sys.argv[1:]]),
        "gpu_run": not cpu, "world_size": world, "steps": steps,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if not cpu else None,
                    "peak_tflops_per_gpu": None if cpu else peak / 1e12},
        "shape": shape.__dict__, "stages": figures, "failures": failures, "passed": not failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny fp32 model over gloo on CPU (what CI runs)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all visible)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per stage (default: 20 on GPU, 4 on CPU)")
    parser.add_argument("--shards", type=Path, default=None, help="labelled shards to use instead of making them")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON report (default on GPU: {RESULT})")
    args = parser.parse_args(argv)
    import tempfile

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu-smoke: no GPU visible (torch.cuda.is_available() is False); run with --cpu for the CPU check",
              file=sys.stderr)
        return 2
    gpus = args.gpus or (0 if args.cpu else torch.cuda.device_count())
    steps = args.steps or (4 if args.cpu else 20)
    out = args.out or (None if args.cpu else RESULT)
    with tempfile.TemporaryDirectory(prefix="tubelet-smoke-") as tmp:
        result = run_smoke(args.work or Path(tmp), args.cpu, gpus, steps, args.shards)
    text = json.dumps(result, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    for failure in result["failures"]:
        print(f"gpu-smoke: FAILED {failure}", file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
