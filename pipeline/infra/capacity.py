"""Capacity plan of a pre-training run on a GPU cluster: time, loader cores, checkpoint traffic.

    python -m jobs.plan --cluster --set model.name=vit_g --set cluster.gpus=64 --set cluster.epochs=1200

Pure arithmetic on four inputs, each stated where it comes from:

- **Model FLOPs per clip** (forward + backward, what our model executes with dual masking):
  :func:`pipeline.models.flops.train_flops_per_clip`.
- **GPU peak** (dense bf16 tensor FLOP/s from the vendor data sheets) and an **MFU** you state:
  the fraction of that peak the step reaches. The clips each GPU consumes per second follow.
- **Loader cost per clip** on one CPU core, measured here by ``python -m benchmarks.bench_data
  --profile`` (``benchmarks/results/data_loading.json``: 16x224 clips cut from 320p H.264, 4
  views per decoded video, one core): the cores each GPU needs to be fed, and whether a node
  with ``cpus_per_node`` cores for ``gpus_per_node`` GPUs is data-bound (then the loader, not the
  GPU, sets the step rate and the MFU a node can reach).
- **Checkpoint bytes** of mixed-precision Adam: 2 (bf16 weights) + 12 (fp32 master, Adam m and
  v) bytes per parameter. Restore egress compares every rank downloading the whole checkpoint
  with every rank fetching only what DeepSpeed reads on that rank (its optimizer partition, and
  under ZeRO-0/1/2 the module weights it loads whole).

The numbers a run really reaches are measured by ``make gpu-smoke`` on a GPU machine; this plan
is what to expect at the MFU you assume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core.config import help_field
from pipeline.models.sizes import ArchSpec

# Dense bf16 tensor-core peaks (no sparsity), vendor data sheets.
GPU_PEAK_TFLOPS = {"a100": 312.0, "h100": 989.0, "h200": 989.0, "l40s": 362.0}
# What benchmarks.bench_data measured on one core of this project's CI machine (the quieter of two runs).
MEASURED_LOADER = {"clips_per_core_4views": 25.7, "clips_per_core_1view": 11.6,
                   "command": "python -m benchmarks.bench_data --profile",
                   "source": "benchmarks/results/data_loading.json of 2026-12-01 12:00 UTC (commit 9ee99dc), medians"
                             " ours_k4 / ours_k1; a re-run on 2026-12-02 under heavier load gave 19.3 / 6.4"}
# VideoMAE V2 (Wang et al., CVPR 2023): ViT-g pre-trained on UnlabeledHybrid, 1.35M clips,
# 1200 epochs, 64 A100 GPUs, about 241 hours.
PAPER_VIT_G = {"gpu": "a100", "gpus": 64, "dataset_videos": 1_350_000, "epochs": 1200, "hours": 241.0}
_BYTES_PER_PARAM = {"weights": 2, "optimizer": 12}  # bf16 module + fp32 master/m/v
GB = 1e9


@dataclass
class ClusterSection:
    """The cluster and the run for ``jobs.plan --cluster`` (TOML section ``[cluster]``)."""

    gpu: Literal["a100", "h100", "h200", "l40s"] = help_field("a100", help="GPU type (its dense bf16 peak)")
    peak_tflops: float = help_field(0.0, help="override the GPU's dense bf16 peak in TFLOP/s (0 = the type's)")
    gpus: int = help_field(64, help="GPUs in the run (data-parallel ranks)")
    gpus_per_node: int = help_field(8, help="GPUs per node")
    cpus_per_node: int = help_field(96, help="CPU cores per node available to the loaders")
    mfu: float = help_field(0.45, help="model FLOPs utilisation the step reaches (fraction of peak)")
    dataset_videos: int = help_field(1_350_000, help="videos in the pre-training set (one epoch reads each once)")
    epochs: int = help_field(1200, help="epochs (VideoMAE V2 ViT-g: 1200 over 1.35M clips)")
    views_per_video: int = help_field(4, help="clips cut from each decoded video (data.repeated_aug)")
    loader_clips_per_core: float = help_field(
        MEASURED_LOADER["clips_per_core_4views"],
        help="loader clips/s on one CPU core at views_per_video (measured: benchmarks/results/data_loading.json)")
    zero_stage: int = help_field(3, help="ZeRO stage of the run (what each rank reads on restore)")
    loader_workers: int = help_field(10, help="loader worker processes per GPU (for /dev/shm per node)")
    prefetch_factor: int = help_field(4, help="batches each loader worker prepares ahead (for /dev/shm per node)")

    def __post_init__(self) -> None:
        if not 0.0 < self.mfu <= 1.0:
            raise ValueError(f"cluster.mfu {self.mfu}: a fraction in (0, 1]")
        if min(self.gpus, self.gpus_per_node, self.cpus_per_node, self.epochs, self.views_per_video) < 1:
            raise ValueError("cluster.gpus, gpus_per_node, cpus_per_node, epochs, views_per_video must be >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"cluster.zero_stage {self.zero_stage}: 0, 1, 2 or 3")

    @property
    def peak(self) -> float:
        """FLOP/s of one GPU at 100% utilisation."""
        return (self.peak_tflops or GPU_PEAK_TFLOPS[self.gpu]) * 1e12


def feed(train_flops_per_clip: float, cluster: ClusterSection) -> dict[str, float]:
    """Clips/s one GPU consumes at the stated MFU, the loader cores that takes, and the MFU a
    node's cores can sustain (``data_bound`` when that is below the stated MFU)."""
    clips_per_gpu = cluster.peak * cluster.mfu / train_flops_per_clip
    cores_per_gpu = clips_per_gpu / cluster.loader_clips_per_core
    cores_available = cluster.cpus_per_node / cluster.gpus_per_node
    fed_clips = cores_available * cluster.loader_clips_per_core
    mfu_fed = min(cluster.mfu, fed_clips * train_flops_per_clip / cluster.peak)
    return {"clips_per_s_per_gpu": clips_per_gpu, "loader_cores_per_gpu": cores_per_gpu,
            "cores_per_gpu_available": cores_available, "data_bound": float(cores_per_gpu > cores_available),
            "mfu_reachable": mfu_fed}


def checkpoint_traffic(params: int, world: int, zero_stage: int) -> dict[str, float]:
    """Checkpoint size and restore egress (bytes) for ``params`` parameters on ``world`` ranks."""
    weights, optimizer = params * _BYTES_PER_PARAM["weights"], params * _BYTES_PER_PARAM["optimizer"]
    # ZeRO-0/1/2 keep the module whole in one file that every rank loads; ZeRO-3 partitions it.
    per_rank_own = optimizer / world + (weights / world if zero_stage == 3 else weights)
    return {"checkpoint_bytes": weights + optimizer, "egress_whole_per_rank": world * (weights + optimizer),
            "egress_own_files": world * per_rank_own}


def cluster_plan(spec: ArchSpec, params: int, train_flops_per_clip: float,
                 cluster: ClusterSection, shm_bytes_per_gpu: float = 0.0) -> dict[str, Any]:
    """Time to train, loader cores per GPU, /dev/shm per node (from the loader's per-rank need,
    ``shm_bytes_per_gpu``), checkpoint traffic; plain data (``--json``)."""
    clips = cluster.dataset_videos * cluster.epochs * cluster.views_per_video
    total_flops = clips * train_flops_per_clip
    seconds_at_full = total_flops / (cluster.gpus * cluster.peak)
    hours = seconds_at_full / cluster.mfu / 3600
    f = feed(train_flops_per_clip, cluster)
    out: dict[str, Any] = {
        "gpu": cluster.gpu, "peak_tflops_per_gpu": cluster.peak / 1e12, "gpus": cluster.gpus, "mfu": cluster.mfu,
        "train_gflops_per_clip": train_flops_per_clip / 1e9, "clips": clips, "total_eflops": total_flops / 1e18,
        "hours_at_mfu": hours, "hours_if_data_bound": seconds_at_full / f["mfu_reachable"] / 3600, **f,
        "shm_gib_per_node": shm_bytes_per_gpu * cluster.gpus_per_node / 2**30, "gpus_per_node": cluster.gpus_per_node,
        "loader_workers": cluster.loader_workers, "prefetch_factor": cluster.prefetch_factor,
        **{k: v / GB for k, v in checkpoint_traffic(params, cluster.gpus, cluster.zero_stage).items()},
        "loader_measurement": MEASURED_LOADER,
    }
    out["checkpoint_gb"] = out.pop("checkpoint_bytes")
    return out


def paper_check(spec: ArchSpec, train_flops_per_clip: float, views_per_video: int) -> dict[str, float]:
    """Our estimate for the VideoMAE V2 ViT-g run against the paper's ~241 h: the MFU that
    figure implies, with our FLOP count and the same clips (videos x epochs x views)."""
    p = PAPER_VIT_G
    clips = p["dataset_videos"] * p["epochs"] * views_per_video
    hours_at_full = clips * train_flops_per_clip / (p["gpus"] * GPU_PEAK_TFLOPS[p["gpu"]] * 1e12) / 3600
    return {"paper_hours": p["hours"], "hours_at_100pct_mfu": hours_at_full,
            "implied_mfu": hours_at_full / p["hours"], "views_per_video": views_per_video}


def format_cluster_plan(name: str, plan: dict[str, Any], rows: list[dict[str, Any]],
                        paper: dict[str, float] | None) -> str:
    """The plan for one model, the per-model feeding table, and the paper check."""
    p = plan
    lines = [f"{name} on {p['gpus']} x {p['gpu']} ({p['peak_tflops_per_gpu']:.0f} TFLOP/s bf16 each) at MFU {p['mfu']:.2f}",
             f"  {p['clips']:.3g} clips x {p['train_gflops_per_clip']:.1f} GFLOP (fwd+bwd) = {p['total_eflops']:.1f} EFLOP"
             f"  ->  {p['hours_at_mfu']:.1f} h ({p['hours_at_mfu'] / 24:.1f} days)",
             f"  loader: {p['clips_per_s_per_gpu']:.0f} clips/s per GPU needs {p['loader_cores_per_gpu']:.1f} cores per GPU"
             f" ({p['cores_per_gpu_available']:.1f} available): "
             + (f"DATA-BOUND, MFU at most {p['mfu_reachable']:.2f}, {p['hours_if_data_bound']:.1f} h"
                if p["data_bound"] else "fed"),
             f"  /dev/shm per node: {p['shm_gib_per_node']:.1f} GiB of uint8 batches in flight"
             f" ({p['gpus_per_node']} GPUs x {p['loader_workers']} loader workers x {p['prefetch_factor']} batches ahead)",
             f"  checkpoint {p['checkpoint_gb']:.1f} GB; restore egress {p['egress_whole_per_rank']:.0f} GB if every rank"
             f" downloads it whole, {p['egress_own_files']:.0f} GB fetching each rank's own files",
             f"  loader rate {MEASURED_LOADER['clips_per_core_4views']} clips/s/core measured by "
             f"`{MEASURED_LOADER['command']}` ({MEASURED_LOADER['source']})", "",
             f"{'model':8s} {'GFLOP/clip':>10s} {'clips/s/GPU':>11s} {'cores/GPU':>9s} {'fed MFU':>8s}  node"]
    for r in rows:
        lines.append(f"{r['model']:8s} {r['train_gflops_per_clip']:10.1f} {r['clips_per_s_per_gpu']:11.0f} "
                     f"{r['loader_cores_per_gpu']:9.1f} {r['mfu_reachable']:8.2f}  "
                     + ("data-bound" if r["data_bound"] else "fed"))
    if paper:
        lines += ["", f"VideoMAE V2 ViT-g check (64 A100, 1200 epochs x 1.35M videos x {paper['views_per_video']} views):"
                  f" {paper['hours_at_100pct_mfu']:.0f} h at 100% MFU; the paper's {paper['paper_hours']:.0f} h"
                  f" implies MFU {paper['implied_mfu']:.2f} (ratio estimate at MFU {p['mfu']:.2f} / paper:"
                  f" {paper['hours_at_100pct_mfu'] / p['mfu'] / paper['paper_hours']:.2f})"]
    return "\n".join(lines)
