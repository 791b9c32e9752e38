"""The VideoMAE V2 pre-training loop, run by every rank: ``pretrain(cfg, session)``.

The shape of every per-rank loop (``finetune``, ``evaluate`` and ``extract`` too): Ray Train
calls it on each worker (``jobs.pretrain`` hands it to :func:`~pipeline.orchestration.ray_train.fit`);
a test can call it in one process with a :class:`~pipeline.train.session.LocalSession`. It reads
top to bottom: set up (engine, data, tracker, restore), then one optimizer step per iteration,
logging and checkpointing on a schedule; the parts the training loops share are in
:mod:`pipeline.train.loop`. Nothing here knows whether it runs on a laptop or a cluster.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import torch

from pipeline.data.loader import pretrain_loader
from pipeline.data.masking import token_grid
from pipeline.infra import engine as eng
from pipeline.infra.tracking import chart_keys, reconstruction_grid
from pipeline.models.flops import token_counts, train_flops_per_clip
from pipeline.models.sizes import get_spec
from pipeline.train import loop
from pipeline.train.batch import batch_video, model_input
from pipeline.train.job_configs import PretrainConfig
from pipeline.train.loop import Setup
from pipeline.train.meter import Meter, format_eta
from pipeline.train.session import Session

log = logging.getLogger(__name__)


def check_config(cfg: PretrainConfig) -> None:
    """What the config alone can show is wrong (the clip size needs no check: the data follows the model)."""
    loop.require_shards(cfg)


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
    # continued pre-training (model.init): whole weights in, before the engine copies its fp32 masters
    return loop.setup(cfg, session, loop.model_factory(cfg, "pretrain"), loader, _meter(cfg, world, cfg.train.steps),
                      rank, world)


def _to_device(batch: dict[str, Any], engine: Any, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    video, _ = model_input(batch_video(batch, engine.device), engine.device, dtype)
    return video, batch["enc_mask"].to(engine.device), batch["dec_mask"].to(engine.device)


def train_step(s: Setup, batches: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """One optimizer step over ``gradient_accumulation_steps`` finite micro-batches; returns the mean loss.

    A micro-batch whose loss is not finite on some rank is skipped by every rank (no backward, no
    ``engine.step()``) and replaced by the next batch; ``s.guard`` counts and limits these.
    """
    losses: list[torch.Tensor] = []
    last: dict[str, Any] = {}
    while len(losses) < s.engine.gradient_accumulation_steps():
        last = loop.next_batch(s, batches)
        loss = loop.backward_step(s, s.engine(*_to_device(last, s.engine, s.dtype)))
        if loss is not None:
            losses.append(loss)
    s.meter.step()
    return torch.stack(losses).mean(), last


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
    first = {"video": batch_video(batch, engine.device, first=1), **{k: batch[k][:1] for k in ("enc_mask", "dec_mask")}}
    video, enc, dec = _to_device(first, engine, dtype)
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


def pretrain(cfg: PretrainConfig, session: Session) -> dict[str, Any]:
    """Run (or resume) pre-training to ``train.steps``; returns the last logged metrics."""
    check_config(cfg)
    rank, world = eng.init_distributed()
    s = setup(cfg, session, rank, world)
    tracker = loop.start_tracker(cfg, "pretrain", rank, world, s.engine.device, s.run_id, s.startup)
    s.run_id = tracker.run_id or s.run_id
    batches, metrics, status = s.loader.forever(), {}, "FAILED"
    try:
        if s.step == 0 and picture_due(cfg, 0, rank):  # the untrained reconstruction: where the picture slider starts
            first = loop.next_batch(s, batches)
            tracker.log_image(reconstruction_picture(s.engine, first, s.dtype), "reconstruction", 0)
            batches = itertools.chain([first], batches)  # still the first step's batch: the data order is unchanged
        while s.step < cfg.train.steps:
            loss, batch = train_step(s, batches)
            s.step += 1
            lr = s.schedule.apply(s.engine, s.step)  # the lr of the next step
            if loop.due(s.step, cfg.train.log_every, cfg.train.steps):
                metrics = loop.step_metrics(s, {"loss": loss})
                tracker.log_metrics(chart_keys(metrics), s.step)
                if rank == 0:
                    log.info("step %d/%d  loss %.4f  lr %.2e  %.1f clips/s  data %.0f%%  eta %s", s.step,
                             cfg.train.steps, metrics["loss"], metrics["lr"], metrics["clips_per_s"],
                             100 * metrics["data_wait_frac"], format_eta(metrics["eta_s"]))
            if picture_due(cfg, s.step, rank):
                tracker.log_image(reconstruction_picture(s.engine, batch, s.dtype), "reconstruction", s.step)
            if loop.due(s.step, cfg.train.checkpoint_every, cfg.train.steps):
                loop.save_checkpoint(s, session, metrics, lr, rank, world)
                tracker.set_tags({"last_checkpoint_step": s.step,
                                  "checkpoints": f"{cfg.run.output.rstrip('/')}/{cfg.run.name}"})
            loop.maybe_fail(cfg, s.step, rank)
        status = "FINISHED"
    finally:
        tracker.end(status)
    return {**metrics, "step": s.step, "run_id": s.run_id}
