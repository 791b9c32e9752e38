"""The fine-tuning loop, run by every rank: ``finetune(cfg, session)`` (the shape of every loop;
what it shares with pre-training is in :mod:`pipeline.train.loop`).

VideoMAE's recipe: encoder (from pre-training or a public checkpoint) + mean pool + fc-norm +
linear head; layer-wise lr decay (``optim.layer_decay``, through the model's layer-id hook),
drop path, mixup / cutmix with label smoothing (soft-target cross entropy), warm-up + cosine
per step, repeated augmentation from the loader. Validation on ``finetune.val_split`` once per
epoch (or every ``val_every`` steps); the best and the last weights are kept as model folders
(:mod:`pipeline.train.model_registry`) under ``<run>/export/{best,last}``, and resumable DeepSpeed
checkpoints as in pre-training. ``finetune.mode = "linear_probe"`` freezes the encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.core.config import ConfigError, to_dict
from pipeline.core.errors import DataError
from pipeline.data.loader import EvalLoader, eval_loader, supervised_loader
from pipeline.data.shard_index import ShardIndex
from pipeline.infra import engine as eng
from pipeline.infra.tracking import chart_keys
from pipeline.models.flops import classify_macs
from pipeline.models.sizes import get_spec
from pipeline.train import loop
from pipeline.train.batch import model_input
from pipeline.train.job_configs import FinetuneConfig
from pipeline.train.meter import Meter, format_eta
from pipeline.train.mixup import Mixup, soft_target_cross_entropy
from pipeline.train.model_registry import ModelCard, ValidationData, recipe_data, write_model_folder
from pipeline.train.scoring import evaluate_pass
from pipeline.train.session import Session

log = logging.getLogger(__name__)


@dataclass
class Setup(loop.Setup):
    """The training loop's setup (``state["best"]``: ``{"top1", "step"}`` of the best validation so
    far) and the validation loader."""

    val: EvalLoader | None = None


def check_config(cfg: FinetuneConfig) -> None:
    """What the config alone can show is wrong (the clip size needs no check: the data follows the model),
    and labels that fit the head."""
    loop.require_shards(cfg)
    if not cfg.model.init:
        raise ConfigError("model.init is empty: name the weights to fine-tune from (a pre-training run folder, a "
                        "weights file, runs:/<run_id>/<path> or models:/<name>@<alias>), or set model.init=random "
                        "for a random-init baseline")
    if (cfg.finetune.mode == "adapter") != (cfg.model.adapter_dim > 0):
        raise DataError("finetune.mode=adapter and model.adapter_dim > 0 go together "
                        f"(got mode={cfg.finetune.mode}, adapter_dim={cfg.model.adapter_dim})")


def class_names(cfg: FinetuneConfig, index: ShardIndex | None = None) -> list[str]:
    """Label names of the shard index; DataError if there are none or more than the head has outputs."""
    index = index or ShardIndex.load(cfg.data.shards)
    if not index.labels:
        raise DataError(f"shards have no labels: {index.uri}/index.json lists none "
                        "(shard a manifest with a label column to fine-tune)")
    if len(index.labels) > cfg.model.num_classes:
        raise DataError(f"the shards have {len(index.labels)} classes but model.num_classes is "
                        f"{cfg.model.num_classes} (or set finetune.classes_from_data=true)")
    return list(index.labels)


def freeze_for_mode(model: torch.nn.Module, mode: str) -> None:
    """Freeze the encoder for ``linear_probe`` and ``adapter`` tuning (adapters stay trainable).

    Frozen parameters have ``requires_grad=False``, so :func:`~pipeline.models.param_groups`
    leaves them out of the optimizer (no Adam state for them either: the point for big encoders).
    """
    if mode == "full":
        return
    for name, p in model.encoder.named_parameters():
        p.requires_grad_(mode == "adapter" and ".adapter." in name)


def _val_loader(cfg: FinetuneConfig, rank: int, world: int) -> EvalLoader | None:
    if not cfg.finetune.val_split:
        return None
    data = dataclasses.replace(cfg.data, split=cfg.finetune.val_split, test_num_clips=cfg.finetune.val_num_clips,
                               test_num_crops=cfg.finetune.val_num_crops)
    return eval_loader(data, rank, world, require_labels=True)


def validation_data(cfg: FinetuneConfig, index: ShardIndex | None = None) -> ValidationData | None:
    """What the validation top-1 of this config is measured on (the shards, ``finetune.val_split``
    and the views :func:`_val_loader` cuts); None without validation."""
    if not cfg.finetune.val_split:
        return None
    index = index or ShardIndex.load(cfg.data.shards)
    shards = index.split(cfg.finetune.val_split)
    content = ""
    if all(s.sha256 for s in shards):
        listed = [list(index.labels), [(s.name, s.samples, s.sha256) for s in shards]]
        content = hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]
    recipe = {"num_frames": cfg.data.num_frames, "sampling_rate": cfg.data.sampling_rate,
              "input_size": cfg.data.input_size, "num_clips": cfg.finetune.val_num_clips,
              "num_crops": cfg.finetune.val_num_crops}
    return ValidationData(cfg.data.shards, cfg.finetune.val_split, recipe, content)


def setup(cfg: FinetuneConfig, session: Session, rank: int, world: int) -> Setup:
    """Engine, loaders and position: fresh, or where the last checkpoint left off."""
    torch.manual_seed(cfg.run.seed)  # the same init (head, and encoder without init weights) on every rank
    loader = supervised_loader(cfg.data, rank, world)
    spec = get_spec(cfg.model.name, **cfg.model.arch_overrides())
    clips = cfg.data.batch_size * world * cfg.deepspeed.gradient_accumulation_steps
    # forward + backward = 3 forward passes of 2 FLOPs per MAC (a frozen encoder in a linear probe does less)
    meter = Meter(clips, spec.num_tokens, 6.0 * classify_macs(spec, cfg.model.num_classes), cfg.train.steps)
    build = loop.model_factory(cfg, "classify", lambda model: freeze_for_mode(model, cfg.finetune.mode))
    s = loop.setup(cfg, session, build, loader, meter, rank, world, state={"best": {"top1": -1.0, "step": 0}})
    if s.step:
        log.info("best top-1 so far %.3f at step %d", s.state["best"]["top1"], s.state["best"]["step"])
    return Setup(**vars(s), val=_val_loader(cfg, rank, world))


def train_step(s: Setup, batches: Any, mixer: Mixup) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over finite micro-batches; returns the mean soft-target loss and the train
    top-1 (against the mixed target's top class) of the last one, both on the training device.

    A micro-batch whose loss is not finite on some rank is skipped by every rank (see pre-training).
    """
    losses: list[torch.Tensor] = []
    correct = torch.zeros(())
    while len(losses) < s.engine.gradient_accumulation_steps():
        batch = loop.next_batch(s, batches)
        video, target = model_input(batch["video"], s.engine.device, s.dtype, mixer, batch["label"])
        logits = s.engine(video)
        target = target.to(logits.device)
        loss = loop.backward_step(s, soft_target_cross_entropy(logits, target))
        if loss is not None:
            losses.append(loss)
            correct = (logits.detach().argmax(-1) == target.argmax(-1)).float().mean()
    s.meter.step()
    return torch.stack(losses).mean(), correct


def validate(cfg: FinetuneConfig, s: Setup, names: list[str]) -> dict[str, float]:
    """Top-1 / top-5 / mean class accuracy on the validation split (every video once, all ranks)."""
    assert s.val is not None
    result = evaluate_pass(s.engine.module, s.val, s.dtype, lockstep=cfg.deepspeed.zero_stage == 3)
    report = result.report(names)
    return {"val_top1": report["top1"], "val_top5": report["top5"], "val_mean_class_acc": report["mean_class_accuracy"],
            "val_videos": report["num_videos"]}


def save_weights(cfg: FinetuneConfig, s: Setup, names: list[str], which: str, rank: int,
                 metrics: dict[str, float]) -> None:
    """Write the model folder ``<run>/export/<which>`` from the live weights (collective under ZeRO-3)."""
    module = s.engine.module
    with eng.gathered(module):
        if rank == 0:
            arch = {**to_dict(cfg.model, redact=False), "patch_size": module.spec.patch_size}  # 0 made concrete
            card = ModelCard(model=arch, class_names=names,
                             data={**recipe_data(cfg.data), "test_num_clips": cfg.data.test_num_clips,
                                   "test_num_crops": cfg.data.test_num_crops},
                             metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                             source={"run": cfg.run.name, "step": s.step, "init": cfg.model.init,
                                     "mode": cfg.finetune.mode, "mlflow_run_id": s.run_id})
            write_model_folder(module.state_dict(), card, sio.join(cfg.run.output, cfg.run.name, "export", which))


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
