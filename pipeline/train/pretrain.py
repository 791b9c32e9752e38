"""The VideoMAE V2 pre-training loop, run by every rank: ``pretrain(cfg, session)``.

Ray Train calls it on each worker (``jobs.pretrain``); a test can call it in one process with a
:class:`~pipeline.train.session.LocalSession`. It reads top to bottom: set up (engine, data,
tracker, restore), then one optimizer step per iteration, logging and checkpointing on a
schedule. Nothing here knows whether it runs on a laptop or a cluster.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.infra import engine as eng
from pipeline.core import io as sio
from pipeline.core.config import config_hash, to_dict
from pipeline.data.loader import TrainLoader, pretrain_loader
from pipeline.core.errors import DataError
from pipeline.data.masking import token_grid
from pipeline.models import create_model_from_config
from pipeline.models.weights import load_file
from pipeline.models.flops import token_counts, train_flops_per_clip
from pipeline.models.sizes import get_spec
from pipeline.infra.tracking import make_tracker, reconstruction_grid
from pipeline.train import checkpoint as ckpt
from pipeline.train import comm
from pipeline.train.batch import model_input
from pipeline.train.config import PretrainConfig
from pipeline.train.meter import Meter, format_eta
from pipeline.train.numerics import NonFiniteFault, NonFiniteGuard
from pipeline.train.session import Session

log = logging.getLogger(__name__)


@dataclass
class Setup:
    engine: Any
    schedule: eng.LrSchedule
    loader: TrainLoader
    meter: Meter
    step: int
    run_id: str
    guard: NonFiniteGuard
    fault: NonFiniteFault


def check_config(cfg: PretrainConfig) -> None:
    """What the config alone can show is wrong (the clip size needs no check: the data follows the model)."""
    if not cfg.data.shards:
        raise DataError("data.shards is not set (a folder or s3:// prefix written by jobs.shard)")


def _model_factory(cfg: PretrainConfig):
    init = cfg.model.init
    model_cfg = type(cfg.model)(**{**to_dict(cfg.model, redact=False), "init": ""})

    def build() -> torch.nn.Module:
        model = create_model_from_config(model_cfg, "pretrain")
        if init:  # continued pre-training: whole weights in, before the engine copies its fp32 masters
            with eng.gathered(model):
                load_file(model, sio.cached_copy(init))  # this node's copy of a remote init
        return model

    return build


def _meter(cfg: PretrainConfig, world: int, total: int) -> Meter:
    spec = get_spec(cfg.model.name, **cfg.model.arch_overrides())
    tokens = token_counts(spec, cfg.mask.encoder_ratio, cfg.mask.decoder_ratio, cfg.mask.encoder_kind)
    clips = cfg.data.batch_size * world * cfg.deepspeed.gradient_accumulation_steps
    flops = train_flops_per_clip(spec, cfg.mask.encoder_ratio, cfg.mask.decoder_ratio, cfg.mask.encoder_kind)
    return Meter(clips, 2 * tokens["visible"] + tokens["decoder_queries"], flops, total)


def setup(cfg: PretrainConfig, session: Session, rank: int, world: int) -> Setup:
    """Engine, loader and position: fresh, or exactly where the last checkpoint left off."""
    torch.manual_seed(cfg.run.seed)  # the same init on every rank (ZeRO-3 partitions rank 0's)
    spec = get_spec(cfg.model.name, **cfg.model.arch_overrides())
    grid = token_grid(cfg.model.num_frames, cfg.model.img_size, spec.patch_size, cfg.model.tubelet_size)
    loader = pretrain_loader(cfg.data, cfg.mask, grid, rank, world)
    with session.restore_dir() as restore_dir:
        restore = ckpt.prepare_restore(restore_dir, rank, world, session.local_rank)
        engine, schedule = eng.build_engine(_model_factory(cfg), cfg.deepspeed, cfg.optim, cfg.data.batch_size,
                                            cfg.train.steps, world, load_universal=bool(restore and restore.universal))
        torch.manual_seed(cfg.run.seed * 1000 + rank)  # from here on (drop path) each rank has its own stream
        step, run_id = 0, ""
        if restore is not None:
            eng.load_checkpoint(engine, restore.ds_dir, restore.tag)
            loader.load_state_dict(restore.loop["data"])
            ckpt.restore_rng(restore.rng_file)  # continues each rank's stream exactly
            step, run_id = int(restore.loop["step"]), restore.loop.get("run_id", "")
            log.info("resumed at step %d (epoch %d, data step %d)", step, loader.epoch, loader.step)
    return Setup(engine, schedule, loader, _meter(cfg, world, cfg.train.steps), step, run_id,
                 guard(cfg, step if restore is not None else -1), fault(cfg, rank, world))


def guard(cfg: PretrainConfig, last_checkpoint: int) -> NonFiniteGuard:
    return NonFiniteGuard(cfg.train.max_nonfinite, f"{cfg.run.output.rstrip('/')}/{cfg.run.name}", last_checkpoint)


def fault(cfg: PretrainConfig, rank: int, world: int) -> NonFiniteFault:
    return NonFiniteFault(cfg.train.fault_nonfinite_step, cfg.train.fault_nonfinite_count, rank == world - 1)


def _to_device(batch: dict[str, Any], engine: Any, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    video, _ = model_input(batch["video"], engine.device, dtype)
    return video, batch["enc_mask"].to(engine.device), batch["dec_mask"].to(engine.device)


def train_step(s: Setup, batches: Any, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, Any]]:
    """One optimizer step over ``gradient_accumulation_steps`` finite micro-batches; returns the mean loss.

    A micro-batch whose loss is not finite on some rank is skipped by every rank (no backward, no
    ``engine.step()``) and replaced by the next batch; ``s.guard`` counts and limits these.
    """
    losses: list[torch.Tensor] = []
    last: dict[str, Any] = {}
    while len(losses) < s.engine.gradient_accumulation_steps():
        t0 = time.monotonic()
        last = next(batches)
        s.meter.data_wait(time.monotonic() - t0)
        loss = s.fault(s.engine(*_to_device(last, s.engine, dtype)), s.step + 1)
        if s.guard.skip(loss, s.step + 1):
            continue
        s.engine.backward(loss)
        s.engine.step()
        losses.append(loss.detach().float())
    s.meter.step()
    return torch.stack(losses).mean(), last


def data_metrics(loader: TrainLoader) -> dict[str, int]:
    stats = loader.stats
    return {"data_samples_ok": stats.samples_ok, "data_decode_errors": stats.decode_errors,
            "data_shard_errors": stats.shard_errors, "data_samples_lost": stats.samples_lost}


def picture_due(cfg: PretrainConfig, step: int, rank: int) -> bool:
    """Whether this rank draws the reconstruction picture at ``step``: rank 0 only (the only rank
    that logs it), except under ZeRO-3 where the forward gathers parameters from every rank."""
    if not cfg.train.image_every or step % cfg.train.image_every:
        return False
    return rank == 0 or cfg.deepspeed.zero_stage == 3


@torch.no_grad()
def reconstruction_picture(engine: Any, batch: dict[str, Any], dtype: torch.dtype) -> np.ndarray:
    """original | masked input | reconstruction of the batch's first clip (collective under ZeRO-3)."""
    model = engine.module
    was_training = model.training
    model.eval()
    video, enc, dec = _to_device({k: batch[k][:1] for k in ("video", "enc_mask", "dec_mask")}, engine, dtype)
    _, pred, keep = model(video, enc, dec, return_pred=True)
    recon = model.reconstruct(video, pred, keep)[0]  # [C, T, H, W] in 0-1
    model.train(was_training)
    s = model.spec
    pixels = model._unnormalise(video.float())[0].clamp(0, 1)  # [C, T, H, W]
    token_mask = enc[0].view(s.grid).repeat_interleave(s.tubelet_size, 0)
    token_mask = token_mask.repeat_interleave(s.patch_size, 1).repeat_interleave(s.patch_size, 2)
    masked = pixels * (~token_mask).float()[None]
    to_u8 = lambda x: (x.permute(1, 2, 3, 0).float().cpu().numpy() * 255).round().astype(np.uint8)  # noqa: E731
    return reconstruction_grid(to_u8(pixels), to_u8(masked), to_u8(recon))


def maybe_fail(cfg: PretrainConfig, step: int, rank: int) -> None:
    """Fault injection for tests: kill rank 0's process once, right after ``fail_at_step``."""
    if rank != 0 or step != cfg.train.fail_at_step:
        return
    # Once per run: the marker lives with the run (a local output; tests only).
    marker = Path(cfg.run.output) / cfg.run.name / ".fault_injected"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        log.warning("fault injection: killing rank 0 after step %d", step)
        os._exit(1)


def pretrain(cfg: PretrainConfig, session: Session) -> dict[str, Any]:
    """Run (or resume) pre-training to ``train.steps``; returns the last logged metrics."""
    check_config(cfg)
    rank, world = eng.init_distributed()
    s = setup(cfg, session, rank, world)
    dtype = eng.compute_dtype(cfg.deepspeed)
    comm.check_placement(s.engine.module, s.engine.device, offloaded=cfg.deepspeed.offload_param != "none")
    tracker = make_tracker(cfg.tracking, rank)
    tracker.start(run_name=cfg.run.name, config=cfg, resume_run_id=s.run_id,
                  tags={"stage": "pretrain", "world_size": world, "config_hash": config_hash(cfg),
                        "dist_backend": comm.backend(), "device": str(s.engine.device)})
    run_id = tracker.run_id or s.run_id
    batches, metrics, status = s.loader.forever(), {}, "FAILED"
    try:
        while s.step < cfg.train.steps:
            loss, batch = train_step(s, batches, dtype)
            s.step += 1
            lr = s.schedule.apply(s.engine, s.step)  # the lr of the next step
            if s.step % cfg.train.log_every == 0 or s.step == cfg.train.steps:
                metrics = {**comm.mean_floats({"loss": loss}), "lr": s.schedule(s.step - 1),
                           "grad_norm": eng.grad_norm(s.engine), "nonfinite_skipped": s.guard.skipped,
                           **s.meter.window(s.step, comm.host_syncs()), **data_metrics(s.loader)}
                tracker.log_metrics(metrics, s.step)
                if rank == 0:
                    log.info("step %d/%d  loss %.4f  lr %.2e  %.1f clips/s  data %.0f%%  eta %s", s.step,
                             cfg.train.steps, metrics["loss"], metrics["lr"], metrics["clips_per_s"],
                             100 * metrics["data_wait_frac"], format_eta(metrics["eta_s"]))
            if picture_due(cfg, s.step, rank):
                tracker.log_image(reconstruction_picture(s.engine, batch, dtype), "reconstruction", s.step)
            if s.step % cfg.train.checkpoint_every == 0 or s.step == cfg.train.steps:
                staging = session.staging_dir(s.step)
                loop = {"data": s.loader.state_dict(), "world_size": world, "run_id": run_id, "lr": lr}
                ckpt.save(s.engine, staging, s.step, loop, rank)
                session.report({**metrics, "step": s.step}, staging)
                s.guard.last_checkpoint = s.step
                tracker.set_tags({"last_checkpoint_step": s.step,
                                  "checkpoints": f"{cfg.run.output.rstrip('/')}/{cfg.run.name}"})
            maybe_fail(cfg, s.step, rank)
        status = "FINISHED"
    finally:
        tracker.end(status)
    return {**metrics, "step": s.step, "run_id": run_id}
