"""DeepSpeed in one place: a plain model + the ``[deepspeed]`` and ``[optim]`` sections -> an engine.

    engine, schedule = build_engine(lambda: create_model("vit_b"), ds_cfg, optim_cfg,
                                    micro_batch=8, total_steps=10_000)
    for step in range(start, total):
        schedule.apply(engine, step)          # lr from the step number alone: resume needs no state
        loss = engine(video.to(engine.device, compute_dtype(ds_cfg)), enc_mask, dec_mask)
        engine.backward(loss); engine.step()

This is the only module that imports deepspeed. The import is deferred (``_deepspeed()``) so the
config sections and the pure schedule functions cost nothing to import, and so ``DS_ACCELERATOR``
can be set first on a machine without CUDA (DeepSpeed picks its accelerator at import time).
Checkpoints: ``save_checkpoint`` / ``load_checkpoint`` on every rank, ``consolidate_fp32`` and
``to_universal`` (N ranks -> M ranks) on one process.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from pipeline.core.config import help_field
from pipeline.core.errors import TubeletError
from pipeline.core.net import free_port
from pipeline.models.hooks import param_groups

Precision = Literal["bf16", "fp32", "fp16"]
AccumDtype = Literal["fp32", "auto", "bf16"]
Offload = Literal["none", "cpu", "nvme"]
ModelOrFactory = nn.Module | Callable[[], nn.Module]


class EngineError(TubeletError, ValueError):
    """An engine setting that cannot work (wrong stage for an offload, fp16 on CPU, ...)."""


@dataclass
class DeepSpeedConfig:
    """DeepSpeed engine settings (TOML section ``[deepspeed]``)."""

    zero_stage: int = help_field(2, help="ZeRO stage: 0 (DDP), 1 (optimizer), 2 (+grads), 3 (+params)")
    precision: Precision = help_field("bf16", help="bf16 | fp32 | fp16 (fp16 with dynamic loss scaling, GPU only)")
    grad_clip: float = help_field(0.0, help="global grad-norm clip; 0 = off (official default; V2's ViT-g script uses 0.02)")
    gradient_accumulation_steps: int = help_field(1, help="micro-batches per optimizer step")
    grad_accum_dtype: AccumDtype = help_field(
        "fp32", help="dtype gradients accumulate in under bf16/fp16: fp32 | auto (the model dtype) | bf16; "
                     "ZeRO-0 always accumulates in the model dtype (DeepSpeed offers fp32 only with ZeRO 1-3)")
    reduce_dtype: Literal["auto", "fp32"] = help_field(
        "auto", help="dtype gradients are reduced across ranks in: auto (the model dtype: half the traffic "
                     "under bf16) | fp32")
    offload_optimizer: Offload = help_field("none", help="optimizer state: none | cpu | nvme (nvme needs stage 3)")
    offload_param: Offload = help_field("none", help="parameters: none | cpu | nvme (stage 3 only)")
    nvme_path: str = help_field("", help="directory for nvme offload files (fast local disk)")
    zero_init: bool = help_field(True, help="stage 3: build the model inside deepspeed.zero.Init (never whole on one rank)")
    contiguous_gradients: bool = help_field(True, help="copy gradients into one buffer as they are produced")
    overlap_comm: bool = help_field(True, help="overlap gradient reduction with the backward pass")
    reduce_bucket_size: int = help_field(500_000_000, help="elements reduced at a time")
    allgather_bucket_size: int = help_field(500_000_000, help="stage 1/2: elements all-gathered at a time")
    stage3_prefetch_bucket_size: int = help_field(50_000_000, help="stage 3: elements prefetched ahead of use")
    stage3_param_persistence_threshold: int = help_field(100_000, help="stage 3: params smaller than this stay whole")
    stage3_max_live_parameters: int = help_field(1_000_000_000, help="stage 3: gathered elements kept at most")
    stage3_max_reuse_distance: int = help_field(1_000_000_000, help="stage 3: keep a param gathered if reused within this")
    aio_block_size: int = help_field(1_048_576, help="nvme offload: async I/O block size in bytes")
    aio_queue_depth: int = help_field(8, help="nvme offload: async I/O queue depth")
    sub_group_size: int = help_field(
        50_000_000, help="stage 3: optimizer sub-group (elements) stepped / swapped at a time; "
                         "nvme offload stages buffer_count buffers of this size in RAM")
    offload_param_buffer_size: int = help_field(
        0, help="nvme param offload: elements per swap buffer (5 buffers); 0 = sub_group_size + 1Mi "
                "(must hold the largest sub-group and the largest parameter)")

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage {self.zero_stage}: choose 0, 1, 2 or 3")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        if self.grad_accum_dtype == "bf16" and self.precision != "bf16":
            raise ValueError(f"grad_accum_dtype=bf16 needs precision=bf16 (got {self.precision}); use fp32 or auto")
        if self.offload_param != "none" and self.zero_stage != 3:
            raise ValueError(f"offload_param={self.offload_param} needs zero_stage 3, not {self.zero_stage}")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if "nvme" in (self.offload_optimizer, self.offload_param):
            if self.zero_stage != 3:
                raise ValueError("nvme offload (ZeRO-Infinity) needs zero_stage 3")
            if not self.nvme_path:
                raise ValueError("nvme offload needs nvme_path (a directory on a fast local disk)")


@dataclass
class OptimConfig:
    """AdamW and its per-step schedule (TOML section ``[optim]``); VideoMAE V2 pre-training defaults.

    The lr rule is the official one (``run_mae_pretraining.py`` / ``run_class_finetuning.py``):
    ``--lr``, ``--min_lr`` and ``--warmup_lr`` are each multiplied by ``total_batch_size / 256``,
    where ``total_batch_size = batch_size x ranks (x update_freq)`` counts *videos*; each video gives
    ``--num_sample`` clips (our ``data.repeated_aug``). Here ``data.batch_size`` counts clips, so
    videos per step = ``data.batch_size x ranks x gradient_accumulation_steps / data.repeated_aug``.
    """

    name: Literal["adamw"] = help_field("adamw", help="optimizer (AdamW, decoupled weight decay)")
    lr: float = help_field(0.0, help="absolute peak lr; 0 = blr x videos per step / 256")
    blr: float = help_field(
        1.5e-4, help="peak lr per 256 videos per optimizer step (the official --lr; a video's data.repeated_aug "
                     "clips count once); used when lr = 0")
    min_blr: float = help_field(
        1e-5, help="lr at the end of the cosine per 256 videos per step, scaled like blr also when lr is set "
                   "(the official --min_lr: 1e-5 pre-training, 1e-6 fine-tuning)")
    warmup_blr: float = help_field(
        0.0, help="lr the linear warm-up starts from, per 256 videos per step (official: 0; its --warmup_lr "
                  "is scaled but never given to cosine_scheduler)")
    weight_decay: float = help_field(0.05, help="AdamW weight decay (never on norms, biases, tokens, pos-emb)")
    betas: tuple[float, float] = help_field((0.9, 0.95), help="Adam betas")
    eps: float = help_field(1e-8, help="Adam epsilon")
    layer_decay: float = help_field(1.0, help="layer-wise lr decay; 1 = off (fine-tuning uses 0.75 for B)")
    warmup_steps: int = help_field(0, help="linear warm-up steps; 0 = warmup_fraction * total steps")
    warmup_fraction: float = help_field(
        0.05, help="warm-up as a fraction of total steps (official warmup_epochs / epochs: 20/200 B, 30/300 g)")
    schedule: Literal["cosine", "constant"] = help_field(
        "cosine", help="after warm-up: cosine to the min lr (official cosine_scheduler), or constant")
    impl: Literal["auto", "torch", "deepspeed"] = help_field(
        "auto", help="auto: torch AdamW (fused on GPU) unless the optimizer is offloaded on GPU (DeepSpeed CPU Adam)")

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas {self.betas}: two values in [0, 1)")
        if self.lr < 0:
            raise ValueError(f"optim.lr must be >= 0 (0 = from optim.blr), got {self.lr}")
        if self.blr <= 0:
            raise ValueError(f"optim.blr must be > 0, got {self.blr}")
        if self.min_blr < 0:
            raise ValueError(f"optim.min_blr must be >= 0, got {self.min_blr}")
        if self.warmup_blr < 0:
            raise ValueError(f"optim.warmup_blr must be >= 0, got {self.warmup_blr}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


# --------------------------------------------------------------------------------------------
# The lr schedule: pure functions of the step number


def global_batch(micro_batch: int, world_size: int, grad_accum: int) -> int:
    """Clips per optimizer step over all ranks (DeepSpeed's ``train_batch_size``)."""
    return micro_batch * world_size * grad_accum


def videos_per_step(micro_batch: int, world_size: int, grad_accum: int, views_per_video: int = 1) -> float:
    """Videos per optimizer step: the official ``total_batch_size`` the lr scales with.

    ``micro_batch`` counts clips (``data.batch_size``); each decoded video gives ``views_per_video``
    of them (``data.repeated_aug``, the official ``--num_sample``), and counts once.
    """
    if views_per_video < 1:
        raise ValueError(f"data.repeated_aug must be >= 1, got {views_per_video}")
    return global_batch(micro_batch, world_size, grad_accum) / views_per_video


def peak_lr(cfg: OptimConfig, videos: float) -> float:
    """``cfg.lr`` if set, else the official linear scaling rule ``blr * videos per step / 256``."""
    return cfg.lr if cfg.lr > 0 else cfg.blr * videos / 256


def final_lr(cfg: OptimConfig, videos: float) -> float:
    """Where the cosine ends: ``min_blr * videos per step / 256`` (official ``args.min_lr`` after scaling)."""
    return cfg.min_blr * videos / 256


def warmup_start_lr(cfg: OptimConfig, videos: float) -> float:
    """Where the warm-up starts: ``warmup_blr * videos per step / 256`` (0 by default, as official)."""
    return cfg.warmup_blr * videos / 256


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """``warmup_steps`` if set, else ``warmup_fraction`` of the run (never more than the run)."""
    warm = cfg.warmup_steps if cfg.warmup_steps > 0 else int(cfg.warmup_fraction * total_steps + 1e-9)
    return min(warm, max(0, total_steps))


def lr_at(step: int, cfg: OptimConfig, total_steps: int, base_lr: float, min_lr: float = 0.0,
          start_lr: float = 0.0) -> float:
    """lr of optimizer step ``step`` (0-based), equal step for step to the official
    ``utils.cosine_scheduler(base_lr, min_lr, epochs, niter_per_ep, warmup, start_warmup_value=start_lr)``
    with ``epochs x niter_per_ep = total_steps`` (the official index is the optimizer step too):

    - warm-up, ``W`` steps: ``np.linspace(start_lr, base_lr, W)``: step 0 is ``start_lr`` (0 by
      default: the first step does not move the weights), step ``W - 1`` is ``base_lr``;
    - then ``min_lr + (base_lr - min_lr) / 2 * (1 + cos(pi * (step - W) / (total_steps - W)))``:
      the cosine starts at ``base_lr`` again and never quite reaches ``min_lr``.

    Past ``total_steps`` (the official table ends there) the lr stays at ``min_lr``.
    ``schedule = "constant"`` keeps ``base_lr`` after the warm-up.
    """
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return start_lr if warm == 1 else start_lr + (base_lr - start_lr) * step / (warm - 1)
    if cfg.schedule == "constant":
        return base_lr
    if step >= total_steps:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * (step - warm) / (total_steps - warm)))


@dataclass(frozen=True)
class LrSchedule:
    """The schedule of one run; ``apply(engine, step)`` sets every group's lr for that step."""

    cfg: OptimConfig
    total_steps: int
    base_lr: float
    min_lr: float = 0.0
    start_lr: float = 0.0

    @classmethod
    def for_run(cls, cfg: OptimConfig, total_steps: int, videos: float) -> LrSchedule:
        """The official rule: peak, final and warm-up start lr all scale with ``videos`` per step / 256."""
        return cls(cfg, total_steps, peak_lr(cfg, videos), final_lr(cfg, videos), warmup_start_lr(cfg, videos))

    def __call__(self, step: int) -> float:
        return lr_at(step, self.cfg, self.total_steps, self.base_lr, self.min_lr, self.start_lr)

    def apply(self, engine: Any, step: int) -> float:
        lr = self(step)
        set_lr(engine, lr)
        return lr


def set_lr(engine: Any, lr: float) -> None:
    """Set ``lr * group["lr_scale"]`` on every optimizer group (layer decay lives in the scale)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# --------------------------------------------------------------------------------------------
# Device, process group, DeepSpeed JSON


def device_type() -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (the same code path, smaller numbers)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(cfg: DeepSpeedConfig) -> torch.dtype:
    """dtype the engine's weights (and so its inputs) have."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.precision]


def _deepspeed() -> Any:
    # DeepSpeed chooses its accelerator when first imported; without CUDA it must be told "cpu".
    if device_type() == "cpu" and not os.environ.get("DS_ACCELERATOR"):
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed

    return deepspeed


def init_distributed() -> tuple[int, int]:
    """Join the torch.distributed group (Ray Train / torchrun made one) or start a 1-rank one.

    Returns ``(rank, world_size)``. Gloo on CPU (oneCCL is not needed), NCCL on GPU.
    """
    deepspeed = _deepspeed()
    if not torch.distributed.is_initialized() and "RANK" not in os.environ:
        # A plain single process: give DeepSpeed the env it expects instead of MPI discovery.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device_type() == "cuda" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _offload(device: Offload, cfg: DeepSpeedConfig, buffers: int) -> dict[str, Any]:
    out: dict[str, Any] = {"device": device, "pin_memory": device_type() == "cuda"}
    if device == "nvme":
        out.update(nvme_path=cfg.nvme_path, buffer_count=buffers)
    return out


def _zero_section(cfg: DeepSpeedConfig) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": cfg.zero_stage, "contiguous_gradients": cfg.contiguous_gradients,
                            "overlap_comm": cfg.overlap_comm, "reduce_bucket_size": cfg.reduce_bucket_size}
    if cfg.zero_stage in (1, 2):
        zero["allgather_bucket_size"] = cfg.allgather_bucket_size
    if cfg.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size=cfg.stage3_prefetch_bucket_size,
                    stage3_param_persistence_threshold=cfg.stage3_param_persistence_threshold,
                    stage3_max_live_parameters=cfg.stage3_max_live_parameters,
                    stage3_max_reuse_distance=cfg.stage3_max_reuse_distance,
                    sub_group_size=cfg.sub_group_size)
    if cfg.offload_optimizer != "none":
        zero["offload_optimizer"] = _offload(cfg.offload_optimizer, cfg, buffers=4)
    if cfg.offload_param != "none":
        zero["offload_param"] = _offload(cfg.offload_param, cfg, buffers=5)
        if cfg.offload_param == "nvme":
            zero["offload_param"].update(
                buffer_size=cfg.offload_param_buffer_size or cfg.sub_group_size + 2**20, max_in_cpu=0)
    return zero


def _optimizer_section(optim: OptimConfig, ds: DeepSpeedConfig, lr: float, device: str) -> dict[str, Any]:
    params: dict[str, Any] = {"lr": lr, "betas": list(optim.betas), "eps": optim.eps,
                              "weight_decay": optim.weight_decay}
    cpu_adam = device == "cuda" and ds.offload_optimizer != "none"
    if optim.impl == "torch" or (optim.impl == "auto" and not cpu_adam):
        # torch AdamW: no extension to compile (DeepSpeed's CPU Adam takes ~70 s to build here).
        params["torch_adam"] = True
        if device == "cuda" and ds.offload_optimizer == "none":
            params["fused"] = True
    return {"type": "AdamW", "params": params}


def deepspeed_config(ds_cfg: DeepSpeedConfig, optim_cfg: OptimConfig, micro_batch: int, world_size: int,
                     device: str | None = None, lr: float | None = None,
                     load_universal: bool = False, views_per_video: int = 1) -> dict[str, Any]:
    """The JSON DeepSpeed gets. No scheduler section: ``set_lr`` drives the lr from the step.
    ``micro_batch`` counts clips; ``views_per_video`` (``data.repeated_aug``) of them are one video."""
    device = device or device_type()
    if ds_cfg.precision == "fp16" and device != "cuda":
        raise EngineError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    accum = ds_cfg.gradient_accumulation_steps
    if lr is None:
        lr = peak_lr(optim_cfg, videos_per_step(micro_batch, world_size, accum, views_per_video))
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "train_batch_size": global_batch(micro_batch, world_size, accum),
        "gradient_clipping": ds_cfg.grad_clip,
        "zero_optimization": _zero_section(ds_cfg),
        "optimizer": _optimizer_section(optim_cfg, ds_cfg, lr, device),
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 2**31 - 1,  # progress is the trainer's job
        "wall_clock_breakdown": False,
    }
    accum_dtype = grad_accum_dtype(ds_cfg)
    if accum_dtype:
        config["data_types"] = {"grad_accum_dtype": accum_dtype}
    if ds_cfg.reduce_dtype == "fp32" and ds_cfg.precision != "fp32":
        config["communication_data_type"] = "fp32"
    if ds_cfg.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif ds_cfg.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                          "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    if "nvme" in (ds_cfg.offload_optimizer, ds_cfg.offload_param):
        config["aio"] = {"block_size": ds_cfg.aio_block_size, "queue_depth": ds_cfg.aio_queue_depth,
                         "single_submit": False, "overlap_events": True, "thread_count": 1}
    return config


def grad_accum_dtype(cfg: DeepSpeedConfig) -> str | None:
    """DeepSpeed's ``data_types.grad_accum_dtype`` for ``cfg`` (None: leave DeepSpeed's default, the model dtype).

    Under bf16, DeepSpeed 0.19 accumulates in fp32 with ZeRO-1 (its BF16_Optimizer: fp32 gradient
    buffers, partitioned fp32 masters), ZeRO-2 and ZeRO-3 (fp32 gradient partitions). ZeRO-0 has
    no such path (DeepSpeed raises on the mix), so there the key is not passed: ZeRO-0 bf16 keeps
    fp32 masters but accumulates and reduces its gradients in bf16.
    """
    if cfg.precision == "fp32" or cfg.grad_accum_dtype == "auto":
        return None
    if cfg.zero_stage == 0:
        return None
    return cfg.grad_accum_dtype


# --------------------------------------------------------------------------------------------
# The engine


def build_model(model_or_factory: ModelOrFactory, ds_cfg: DeepSpeedConfig, config: dict[str, Any]) -> nn.Module:
    """Call the factory, inside ``deepspeed.zero.Init`` for stage 3 + ``zero_init``.

    Under zero.Init every parameter is partitioned as soon as its module is built, so a model
    larger than one rank's memory never exists whole; DeepSpeed gathers params for ``Module.apply``
    so the model's own init still runs on full tensors.
    """
    if isinstance(model_or_factory, nn.Module):
        return model_or_factory
    if ds_cfg.zero_stage == 3 and ds_cfg.zero_init:
        with _deepspeed().zero.Init(config_dict_or_path=config):
            return model_or_factory()
    return model_or_factory()


def build_engine(model_or_factory: ModelOrFactory, ds_cfg: DeepSpeedConfig, optim_cfg: OptimConfig,
                 micro_batch: int, total_steps: int, world_size: int | None = None,
                 load_universal: bool = False, views_per_video: int = 1) -> tuple[Any, LrSchedule]:
    """A DeepSpeed engine and its lr schedule; the lr of step 0 is already set.

    ``micro_batch`` is clips per rank; ``views_per_video`` (``data.repeated_aug``) of them come from
    one video, and the lr scales with videos per step (the official rule, see :class:`OptimConfig`).

    Pass a factory (``lambda: create_model(...)``) so stage 3 can build the model partitioned.
    ``load_universal`` makes ``load_checkpoint`` read a checkpoint made by :func:`to_universal`.
    """
    deepspeed = _deepspeed()
    _, dist_world = init_distributed()
    world_size = world_size or dist_world
    videos = videos_per_step(micro_batch, world_size, ds_cfg.gradient_accumulation_steps, views_per_video)
    schedule = LrSchedule.for_run(optim_cfg, total_steps, videos)
    config = deepspeed_config(ds_cfg, optim_cfg, micro_batch, world_size, lr=schedule.base_lr,
                              load_universal=load_universal)
    model = build_model(model_or_factory, ds_cfg, config)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, optim_cfg.weight_decay, optim_cfg.layer_decay, with_names=False),
                                           config=config)
    schedule.apply(engine, 0)
    return engine, schedule


@contextlib.contextmanager
def gathered(module: nn.Module, modifier_rank: int = 0) -> Iterator[None]:
    """Whole parameters inside the block, even under ZeRO-3 (edits on ``modifier_rank`` are kept).

    Used to load initial weights into a model built under ``zero.Init``, before the engine
    copies them into its fp32 master weights.
    """
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with _deepspeed().zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def grad_norm(engine: Any) -> float | None:
    """Global gradient norm of the last optimizer step (None before the first one)."""
    norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)


# --------------------------------------------------------------------------------------------
# Checkpoints


_CLIENT_KEY = "tubelet_client_state"


def save_checkpoint(engine: Any, directory: str | Path, tag: str, client_state: dict[str, Any] | None = None) -> Path:
    """Every rank writes its shard to ``directory/tag`` (collective: call on all ranks)."""
    # Under one key: DeepSpeed returns its own entries mixed in (all of them after a universal load).
    engine.save_checkpoint(str(directory), tag=tag, client_state={_CLIENT_KEY: dict(client_state or {})})
    return Path(directory) / tag


def load_checkpoint(engine: Any, directory: str | Path, tag: str, load_optimizer_states: bool = True) -> dict[str, Any]:
    """Restore weights + optimizer state saved with the same world size (or converted to universal);
    returns the ``client_state`` given to :func:`save_checkpoint`."""
    path = Path(directory) / tag
    if not path.is_dir():
        raise TubeletError(f"no checkpoint {tag!r} in {directory}")
    load_path, client_state = engine.load_checkpoint(str(directory), tag=tag,
                                                     load_optimizer_states=load_optimizer_states)
    if load_path is None:
        raise TubeletError(f"checkpoint {path} could not be loaded (see the DeepSpeed log above)")
    return dict((client_state or {}).get(_CLIENT_KEY, {}))


def consolidate_fp32(directory: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """Full fp32 ``state_dict`` from a ZeRO checkpoint's shards (one process, CPU memory)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    _deepspeed()
    return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag)


def to_universal(directory: str | Path, tag: str, out_dir: str | Path, workers: int = 2) -> Path:
    """Convert ``directory/tag`` (saved on N ranks) to a universal checkpoint ``out_dir/tag`` that
    loads on any number of ranks with ``build_engine(..., load_universal=True)``."""
    source, target = Path(directory) / tag, Path(out_dir) / tag
    if not source.is_dir():
        raise TubeletError(f"no checkpoint {tag!r} in {directory}")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if device_type() == "cpu":
        env.setdefault("DS_ACCELERATOR", "cpu")
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
           "--output_folder", str(target), "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TubeletError(f"universal conversion of {source} failed: {last[0]}")
    return target


__all__ = ["DeepSpeedConfig", "EngineError", "LrSchedule", "OptimConfig", "build_engine", "build_model",
           "compute_dtype", "consolidate_fp32", "gathered", "deepspeed_config", "device_type", "global_batch",
           "grad_accum_dtype", "grad_norm",
           "final_lr", "init_distributed", "load_checkpoint", "lr_at", "peak_lr", "save_checkpoint", "set_lr",
           "to_universal", "videos_per_step", "warmup_start_lr", "warmup_steps"]
