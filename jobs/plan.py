"""Plan a pre-training run: parameters, FLOPs per clip and model-state memory per GPU.

    python -m jobs.plan --set model.name=vit_g --set plan.world_size=64 [--json]
    python -m jobs.plan --table   # the shipped configs: model states per GPU
    python -m jobs.plan --shm     # the shipped configs: /dev/shm their loaders need per node

Model-state memory follows the ZeRO paper (Rajbhandari et al. 2020) for P parameters on N
GPUs with mixed-precision Adam (bytes/param: 2 param + 2 grad + 12 optimizer = fp32 master,
momentum, variance): stage 0 16P, stage 1 4P + 12P/N, stage 2 2P + 14P/N, stage 3 16P/N.
In fp32 the split is 4 + 4 + 8. Activations are not included (they depend on batch and
checkpointing). Nothing is allocated: the model is built on the ``meta`` device.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.core.config import help_field
from pipeline.data.loader import FinetuneDataConfig
from pipeline.data.masking import MaskConfig
from pipeline.infra.capacity import ClusterSection, cluster_plan, format_cluster_plan, paper_check
from pipeline.models import ModelConfig, create_model_from_config
from pipeline.models.flops import param_counts, pretrain_macs, train_flops_per_clip
from pipeline.models.sizes import ArchSpec

GIB = 1024**3
CONFIGS = Path(__file__).resolve().parent / "configs"
# bytes per parameter: (weights, gradients, optimizer states)
_BYTES = {"bf16": (2, 2, 12), "fp32": (4, 4, 8)}


@dataclass
class PlanSection:
    """Cluster shape for the memory estimate (TOML section ``[plan]``)."""

    world_size: int = help_field(8, help="number of GPUs (data-parallel ranks) sharing the model states")
    precision: Literal["bf16", "fp32"] = help_field("bf16", help="bf16 = mixed precision with fp32 master weights")
    batch_per_gpu: int = help_field(32, help="clips per GPU per step (for FLOPs per step)")


@dataclass
class PlanConfig:
    """Print parameters, FLOPs per clip and per-GPU model-state memory by ZeRO stage."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    plan: PlanSection = field(default_factory=PlanSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)


def zero_memory(params: int, world_size: int, precision: str) -> dict[str, float]:
    """Model-state bytes per GPU for ZeRO stages 0-3."""
    w, g, o = _BYTES[precision]
    n = max(world_size, 1)
    return {"stage0": (w + g + o) * params, "stage1": (w + g) * params + o * params / n,
            "stage2": w * params + (g + o) * params / n, "stage3": (w + g + o) * params / n}


def make_plan(cfg: PlanConfig) -> dict[str, Any]:
    """The plan as plain data (what ``--json`` prints)."""
    spec = create_model_from_config(dataclasses.replace(cfg.model, init=""), device="meta").spec
    params = param_counts(spec, layer_scale=cfg.model.layer_scale_init > 0)
    m = cfg.mask
    # "with" uses the configured running-cell ratio, or the V2 default 0.5 when the config says V1.
    dual = pretrain_macs(spec, m.encoder_ratio, m.decoder_ratio or 0.5, m.encoder_kind)
    single = pretrain_macs(spec, m.encoder_ratio, 0.0, m.encoder_kind)
    flops = {}
    for name, count in (("with_decoder_masking", dual), ("without_decoder_masking", single)):
        flops[name] = {"encoder_gmacs": count.encoder / 1e9, "decoder_gmacs": count.decoder / 1e9,
                       "forward_gflops": 2 * count.total / 1e9, "train_gflops": 6 * count.total / 1e9,
                       "tokens_encoder": count.tokens_encoder, "tokens_decoder": count.tokens_decoder}
    flops["dual_over_single"] = dual.total / single.total
    chosen = dual if m.decoder_ratio else single
    p = cfg.plan
    memory = {k: v / GIB for k, v in zero_memory(params["total"], p.world_size, p.precision).items()}
    return {"model": cfg.model.name, "input": {"num_frames": spec.num_frames, "img_size": spec.img_size,
                                               "patch_size": spec.patch_size, "grid": list(spec.grid)},
            "mask": {"encoder_ratio": m.encoder_ratio, "encoder_kind": m.encoder_kind, "decoder_ratio": m.decoder_ratio},
            "params": params, "flops_per_clip": flops,
            "train_tflops_per_step_per_gpu": 6 * chosen.total * p.batch_per_gpu / 1e12,
            "memory_gib_per_gpu": memory, "world_size": p.world_size, "precision": p.precision}


SIZES = ("vit_s", "vit_b", "vit_l", "vit_h", "vit_g")


def _pretrain_cost(cfg: PlanConfig, name: str) -> tuple[ArchSpec, int, float]:
    """Spec, parameters (encoder + decoder) and fwd+bwd FLOPs per clip of size ``name`` at the
    configured input and masks."""
    # another size than the configured one gets its own patch (14 for vit_g)
    model = dataclasses.replace(cfg.model, init="", name=name, patch_size=cfg.model.patch_size if name == cfg.model.name else 0)
    spec = create_model_from_config(model, device="meta").spec
    params = param_counts(spec, layer_scale=cfg.model.layer_scale_init > 0)["total"]
    m = cfg.mask
    return spec, params, train_flops_per_clip(spec, m.encoder_ratio, m.decoder_ratio, m.encoder_kind)


def make_cluster_plan(cfg: PlanConfig) -> dict[str, Any]:
    """``--cluster``: the configured model on the configured cluster, every size's feeding, and
    the VideoMAE V2 ViT-g paper check."""
    spec, params, flops = _pretrain_cost(cfg, cfg.model.name)
    c = cfg.cluster
    data = FinetuneDataConfig(num_frames=spec.num_frames, input_size=spec.img_size, batch_size=cfg.plan.batch_per_gpu,
                      num_workers=c.loader_workers, prefetch_factor=c.prefetch_factor)
    shm = loader_shm_bytes(data, train_clip_bytes(data, spec.num_tokens))
    plan = cluster_plan(spec, params, flops, c, shm_bytes_per_gpu=shm)
    rows = []
    for name in SIZES:
        s, p, f = _pretrain_cost(cfg, name)
        rows.append({"model": name, **cluster_plan(s, p, f, cfg.cluster)})
    g_spec, _, g_flops = _pretrain_cost(cfg, "vit_g")
    return {"model": cfg.model.name, "plan": plan, "sizes": rows,
            "paper_check": paper_check(g_spec, g_flops, cfg.cluster.views_per_video)}


def format_plan(plan: dict[str, Any]) -> str:
    """Human-readable tables."""
    pr, fl, mem = plan["params"], plan["flops_per_clip"], plan["memory_gib_per_gpu"]
    lines = [f"{plan['model']}  input {plan['input']['num_frames']}x{plan['input']['img_size']} "
             f"patch {plan['input']['patch_size']} grid {plan['input']['grid']}",
             f"params (M)   encoder {pr['encoder'] / 1e6:9.2f}   decoder {pr['decoder'] / 1e6:8.2f}   "
             f"total {pr['total'] / 1e6:9.2f}", "",
             f"{'FLOPs per clip (G MACs, fvcore)':34s} {'encoder':>9s} {'decoder':>9s} {'fwd GFLOPs':>11s} {'fwd+bwd':>9s}"]
    for name in ("with_decoder_masking", "without_decoder_masking"):
        f = fl[name]
        lines.append(f"{name:34s} {f['encoder_gmacs']:9.2f} {f['decoder_gmacs']:9.2f} "
                     f"{f['forward_gflops']:11.2f} {f['train_gflops']:9.2f}")
    lines += [f"dual / encoder-only masking: {fl['dual_over_single']:.3f}", "",
              f"model states per GPU (GiB), {plan['precision']}, world size {plan['world_size']}:",
              "  " + "   ".join(f"ZeRO-{k[-1]} {v:8.2f}" for k, v in mem.items())]
    return "\n".join(lines)


def config_rows(root: str | Path = CONFIGS) -> list[dict[str, Any]]:
    """One row per shipped pre-training / fine-tuning config: its model, input, ZeRO stage,
    precision, batch, GPUs and model-state memory per GPU (the estimate above, at the config's
    own stage and world size; optimizer state offloaded to CPU/NVMe is not on the GPU)."""
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import FinetuneConfig, PretrainConfig

    rows = []
    for job, cls, task in (("pretrain", PretrainConfig, "pretrain"), ("finetune", FinetuneConfig, "classify")):
        for path in sorted(Path(root, job).glob("*.toml")):
            cfg = load_config(cls, path, [])
            model = create_model_from_config(dataclasses.replace(cfg.model, init=""), task, device="meta")
            params = sum(p.numel() for p in model.parameters())
            ds, world = cfg.deepspeed, cfg.scaling.num_workers
            w, g, o = _BYTES["fp32" if ds.precision == "fp32" else "bf16"]
            if ds.offload_optimizer != "none":
                o = 0
            shard = {0: (1, 1, 1), 1: (1, 1, world), 2: (1, world, world), 3: (world, world, world)}[ds.zero_stage]
            states = params * (w / shard[0] + g / shard[1] + o / shard[2])
            rows.append({"config": f"{job}/{path.stem}", "model": cfg.model.name,
                         "input": f"{cfg.model.num_frames}x{cfg.model.img_size}", "params_m": params / 1e6,
                         "zero_stage": ds.zero_stage, "precision": ds.precision,
                         "offload": ds.offload_optimizer if ds.offload_optimizer != "none" else "-",
                         "batch_per_gpu": cfg.data.batch_size, "gpus": world if cfg.scaling.use_gpu else 0,
                         "workers": world, "model_states_gib": states / GIB})
    return rows


def config_table(root: str | Path = CONFIGS) -> str:
    """The rows as the Markdown table in the README (``python -m jobs.plan --table``)."""
    lines = ["| config | model | frames x px | params (M) | ZeRO | precision | optimizer offload | "
             "batch / rank | ranks | model states / rank (GiB) |", "|---|---|---|---:|---:|---|---|---:|---:|---:|"]
    for r in config_rows(root):
        ranks = f"{r['gpus']} GPUs" if r["gpus"] else f"{r['workers']} CPU"
        lines.append(f"| `{r['config']}` | {r['model']} | {r['input']} | {r['params_m']:.1f} | {r['zero_stage']} | "
                     f"{r['precision']} | {r['offload']} | {r['batch_per_gpu']} | {ranks} | {r['model_states_gib']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Shared memory (/dev/shm) the loaders of a shipped config keep in flight per node

GPUS_PER_NODE = 8  # the GPU node of cluster/kuberay/*.yaml and cluster/launcher/aws.yaml (8 x A100)
_SHM_JOBS = ("pretrain", "finetune", "evaluate", "extract")


def train_clip_bytes(data: Any, tokens: int = 0, video_bytes_per_value: int = 1) -> int:
    """Bytes of one clip in a training batch: video ``[C, T, S, S]`` (uint8: 1 byte a value; the
    float32 hand-off it replaced: 4), frame indices ``[T]`` and label (int64), and with
    ``tokens`` the two bool masks (pre-training)."""
    return video_bytes_per_value * 3 * data.num_frames * data.input_size**2 + 8 * data.num_frames + 8 + 2 * tokens


def eval_video_bytes(data: Any, views: int, video_bytes_per_value: int = 1) -> int:
    """Bytes of one video in an evaluation batch: ``views`` clips ``[C, T, S, S]`` and its label."""
    return video_bytes_per_value * views * 3 * data.num_frames * data.input_size**2 + 8


def loader_shm_bytes(data: Any, item_bytes: int) -> int:
    """What one loader holds in ``/dev/shm``: each of ``num_workers`` workers has up to
    ``prefetch_factor`` batches of ``batch_size`` items ready (torch's bound on outstanding
    batches), plus the one being pinned or consumed. In-process loading (0 workers) uses none."""
    if data.num_workers == 0:
        return 0
    return (data.num_workers * data.prefetch_factor + 1) * data.batch_size * item_bytes


def rank_shm_bytes(job: str, cfg: Any, video_bytes_per_value: int = 1) -> int:
    """``/dev/shm`` bytes one rank of ``cfg`` (a ``jobs.<job>`` config) needs at its peak.

    Fine-tuning validates while its training loader's workers keep their prefetched batches:
    both loaders count.
    """
    from pipeline.models.sizes import get_spec

    data = cfg.data
    if job == "pretrain":
        tokens = get_spec(cfg.model.name, **cfg.model.arch_overrides()).num_tokens
        return loader_shm_bytes(data, train_clip_bytes(data, tokens, video_bytes_per_value))
    if job == "finetune":
        need = loader_shm_bytes(data, train_clip_bytes(data, 0, video_bytes_per_value))
        if cfg.finetune.val_split:
            views = cfg.finetune.val_num_clips * cfg.finetune.val_num_crops
            need += loader_shm_bytes(data, eval_video_bytes(data, views, video_bytes_per_value))
        return need
    return loader_shm_bytes(data, eval_video_bytes(data, data.test_num_clips * data.test_num_crops,
                                                   video_bytes_per_value))


def shm_rows(gpus_per_node: int = GPUS_PER_NODE, root: str | Path = CONFIGS) -> list[dict[str, Any]]:
    """Per shipped config: ranks on one node (GPU configs: up to ``gpus_per_node``; CPU configs run
    all ranks on one machine) and the ``/dev/shm`` GiB per rank and per node, uint8 hand-off (and,
    for comparison, the float32 one it replaced)."""
    from pipeline.core.config import load_config
    from pipeline.submission import config_class

    rows = []
    for job in _SHM_JOBS:
        for path in sorted(Path(root, job).glob("*.toml")):
            cfg = load_config(config_class(job), path, [])
            ranks = cfg.scaling.num_workers
            per_node = min(ranks, gpus_per_node) if cfg.scaling.use_gpu else ranks
            rank, rank_f32 = rank_shm_bytes(job, cfg), rank_shm_bytes(job, cfg, video_bytes_per_value=4)
            rows.append({"config": f"{job}/{path.stem}", "gpu": cfg.scaling.use_gpu, "ranks_per_node": per_node,
                         "loader_workers": cfg.data.num_workers, "prefetch_factor": cfg.data.prefetch_factor,
                         "batch_size": cfg.data.batch_size, "shm_gib_per_rank": rank / GIB,
                         "shm_gib_per_node": per_node * rank / GIB,
                         "shm_gib_per_node_float32": per_node * rank_f32 / GIB})
    return rows


def shm_table(gpus_per_node: int = GPUS_PER_NODE) -> str:
    """``python -m jobs.plan --shm``: the rows as a Markdown table."""
    lines = [f"/dev/shm per node ({gpus_per_node}-GPU nodes), uint8 hand-off (float32 hand-off before it):", "",
             "| config | ranks / node | workers x prefetch x batch | GiB / rank | GiB / node | float32: GiB / node |",
             "|---|---:|---|---:|---:|---:|"]
    for r in shm_rows(gpus_per_node):
        lines.append(f"| `{r['config']}` | {r['ranks_per_node']} | {r['loader_workers']} x {r['prefetch_factor']} x "
                     f"{r['batch_size']} | {r['shm_gib_per_rank']:.2f} | {r['shm_gib_per_node']:.1f} | "
                     f"{r['shm_gib_per_node_float32']:.1f} |")
    return "\n".join(lines)


def run(cfg: PlanConfig, json_output: bool = False, cluster: bool = False) -> int:
    if cluster:
        out = make_cluster_plan(cfg)
        text = format_cluster_plan(out["model"], out["plan"], out["sizes"], out["paper_check"])
        print(json.dumps(out, indent=2) if json_output else text)
        return 0
    plan = make_plan(cfg)
    print(json.dumps(plan, indent=2) if json_output else format_plan(plan))
    return 0


def run_cluster(cfg: PlanConfig, json_output: bool = False) -> int:
    return run(cfg, json_output, cluster=True)


if __name__ == "__main__":
    import sys

    from jobs._cli import job_main

    if sys.argv[1:] == ["--table"]:  # the README's table of shipped configs
        print(config_table())
        raise SystemExit(0)
    if sys.argv[1:] == ["--shm"]:  # shared memory per node of the shipped configs
        print(shm_table())
        raise SystemExit(0)
    argv = sys.argv[1:]
    job = run_cluster if "--cluster" in argv else run  # the capacity plan of a cluster run
    argv = [a for a in argv if a != "--cluster"]
    raise SystemExit(job_main(PlanConfig, job, argv, prog="jobs.plan", default_config="plan/default.toml"))
