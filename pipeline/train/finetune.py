"""The fine-tuning loop, run by every rank: ``finetune(cfg, session)`` (the shape of every loop;
what it shares with pre-training is in :mod:`pipeline.train.loop`).

VideoMAE's recipe: encoder (from pre-training or a public checkpoint) + mean pool + fc-norm +
linear head; layer-wise lr decay (``optim.layer_decay``, through the model's layer-id hook),
drop path, mixup / cutmix with label smoothing (soft-target cross entropy), warm-up + cosine
per step, repeated augmentation from the loader. Validation on ``finetune.val_split`` once per
epoch (or every ``val_every`` steps); the best and the last weights are kept as model folders
(:mod:`pipeline.train.model_registry`) under ``<run>/export/{best,last}``, and resumable DeepSpeed
checkpoints as in pre-training. ``finetune.mode = "linear_probe"`` freezes the encoder. What it
shares with distillation (checks, validation, model folders) is in :mod:`pipeline.train.supervised`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.data.loader import supervised_loader
from pipeline.infra import engine as eng
from pipeline.infra.tracking import chart_keys
from pipeline.models.flops import classify_macs
from pipeline.models.sizes import get_spec
from pipeline.train import loop
from pipeline.train.batch import batch_video, model_input
from pipeline.train.job_configs import FinetuneConfig
from pipeline.train.meter import Meter, format_eta
from pipeline.train.mixup import Mixup, soft_target_cross_entropy
from pipeline.train.session import Session
from pipeline.train.supervised import (
    Setup,
    check_config,
    class_names,
    freeze_for_mode,
    left_out,
    save_weights,
    val_loader,
    validate,
    validation_data,
)

log = logging.getLogger(__name__)


def setup(cfg: FinetuneConfig, session: Session, rank: int, world: int) -> Setup:
    """Engine, loaders and position: fresh, or where the last checkpoint left off."""
    torch.manual_seed(cfg.run.seed)  # the same init (head, and encoder without init weights) on every rank
    loader = supervised_loader(cfg.data, rank, world, exclude=left_out(cfg))
    spec = get_spec(cfg.model.name, **cfg.model.arch_overrides())
    clips = cfg.data.batch_size * world * cfg.deepspeed.gradient_accumulation_steps
    # forward + backward = 3 forward passes of 2 FLOPs per MAC (a frozen encoder in a linear probe does less)
    meter = Meter(clips, spec.num_tokens, 6.0 * classify_macs(spec, cfg.model.num_classes), cfg.train.steps)
    build = loop.model_factory(cfg, "classify", lambda model: freeze_for_mode(model, cfg.finetune.mode))
    s = loop.setup(cfg, session, build, loader, meter, rank, world, state={"best": {"top1": -1.0, "step": 0}})
    if s.step:
        log.info("best top-1 so far %.3f at step %d", s.state["best"]["top1"], s.state["best"]["step"])
    return Setup(**vars(s), val=val_loader(cfg, rank, world))


def train_step(s: Setup, batches: Any, mixer: Mixup) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over finite micro-batches; returns the mean soft-target loss and the train
    top-1 (against the mixed target's top class) of the last one, both on the training device.

    A micro-batch whose loss is not finite on some rank is skipped by every rank (see pre-training).
    """
    losses: list[torch.Tensor] = []
    correct = torch.zeros(())
    while len(losses) < s.engine.gradient_accumulation_steps():
        batch = loop.next_batch(s, batches)
        video = batch_video(batch, s.engine.device)
        video, target = model_input(video, s.engine.device, s.dtype, mixer, batch["label"])
        logits = s.engine(video)
        target = target.to(logits.device)
        loss = loop.backward_step(s, soft_target_cross_entropy(logits, target))
        if loss is not None:
            losses.append(loss)
            correct = (logits.detach().argmax(-1) == target.argmax(-1)).float().mean()
    s.meter.step()
    return torch.stack(losses).mean(), correct


def finetune(cfg: FinetuneConfig, session: Session) -> dict[str, Any]:
    """Run (or resume) fine-tuning to ``train.steps``; returns the last metrics and the best top-1."""
    check_config(cfg)
    names = class_names(cfg)
    rank, world = eng.init_distributed()
    s = setup(cfg, session, rank, world)
    tracker = loop.start_tracker(cfg, "finetune", rank, world, s.engine.device, s.run_id, s.startup,
                                 mode=cfg.finetune.mode)
    s.run_id = tracker.run_id or s.run_id
    mixer = Mixup(cfg.mixup, cfg.model.num_classes)
    val_every = cfg.finetune.val_every or s.loader.steps_per_epoch
    batches, metrics, status = s.loader.forever(), {}, "FAILED"
    try:
        while s.step < cfg.train.steps:
            loss, acc = train_step(s, batches, mixer)
            s.step += 1
            lr = s.schedule.apply(s.engine, s.step)
            if loop.due(s.step, cfg.train.log_every, cfg.train.steps):
                metrics = {**loop.step_metrics(s, {"loss": loss, "train_top1": acc}),
                           "epoch": s.step / s.loader.steps_per_epoch}
                tracker.log_metrics(chart_keys(metrics), s.step)
                if rank == 0:
                    log.info("step %d/%d  loss %.4f  lr %.2e  %.1f clips/s  eta %s", s.step, cfg.train.steps,
                             metrics["loss"], metrics["lr"], metrics["clips_per_s"], format_eta(metrics["eta_s"]))
            if s.val is not None and loop.due(s.step, val_every, cfg.train.steps):
                val = validate(cfg, s, names)
                metrics.update(val)
                tracker.log_metrics(val, s.step)
                if rank == 0:
                    log.info("step %d  val top-1 %.3f  top-5 %.3f", s.step, val["val_top1"], val["val_top5"])
                if val["val_top1"] > s.state["best"]["top1"]:
                    s.state["best"] = {"top1": val["val_top1"], "step": s.step}
                    save_weights(cfg, s, names, "best", rank, val)
            if loop.due(s.step, cfg.train.checkpoint_every, cfg.train.steps):
                loop.save_checkpoint(s, session, {**metrics, "best_top1": s.state["best"]["top1"]}, lr, rank, world)
            loop.maybe_fail(cfg, s.step, rank)
        save_weights(cfg, s, names, "last", rank, metrics)
        best = s.state["best"]
        tracker.log_metrics({"best_val_top1": best["top1"], "best_step": best["step"]}, s.step)
        tracker.set_tags({"export": sio.join(cfg.run.output, cfg.run.name, "export")})
        status = "FINISHED"
    finally:
        tracker.end(status)
    return {**metrics, "step": s.step, "run_id": s.run_id, "best": s.state["best"]}


__all__ = ["check_config", "class_names", "finetune", "freeze_for_mode", "setup", "train_step", "validate",
           "validation_data"]
