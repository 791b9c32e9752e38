"""The distillation loop, run by every rank: ``distill(cfg, session)`` (the shape of every loop).

A fine-tuned teacher classifier (``distill.teacher``, a model folder resolved on the driver)
supervises a student classifier (``[model]``, from a pre-trained encoder or a random init, as in
fine-tuning) on the same shards:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, target)
           + feature_weight * SP(student features, teacher features)

``target`` is fine-tuning's soft target (mixup / cutmix, label smoothing); on shards without
labels the CE term is dropped (alpha taken as 1) and the student's head is the teacher's classes.
The teacher sees exactly the clip the student sees, augmented and mixed ("consistent teaching",
Beyer et al. 2022).

``SP``, the optional feature term (``distill.feature_weight``; 0 = off, the default, and then the
loss, the hooks and the teacher's forward are exactly as without it), is similarity-preserving
distillation (Tung & Mori, ICCV 2019) of the pooled clip features ``[B, D]`` (the output of
``Classifier.fc_norm``): ``G = F F^T`` of each model, each row L2-normalised, and
``||G_s - G_t||_F^2 / B^2``, in fp32. It compares the batch's pairwise similarities, not the
features, so it needs no projector and a student narrower than its teacher distils as is. The
student's features are taken by a forward hook on its ``fc_norm`` (:class:`FeatureTap`: the
DeepSpeed engine's forward stays the student's only forward), the teacher's by ``forward_features``
then ``forward_head`` (still one forward).

Everything else is fine-tuning's: the engine and restore block (:mod:`pipeline.train.loop`),
validation, the best / last model folders and their cards (:mod:`pipeline.train.supervised`), so
``jobs.evaluate`` and the registry take the student as any fine-tuned classifier.

The teacher is a plain module on the training device, in eval mode (no dropout or drop path), its
parameters frozen and its forward under ``torch.no_grad``, cast to the student's compute dtype
(bf16 when the engine is bf16). It is deliberately **not** a DeepSpeed engine: it has no optimizer,
so an engine would only add fp32 master copies and, under ZeRO-3, turn each of its forward passes
into per-layer all-gathers of weights every rank can simply hold. (A teacher too large for one
device would need partitioned inference: not supported here.) It is built under a forked RNG, so
the student's init, drop path and mixup streams are those of a fine-tuning run with the same seed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core import io as sio
from pipeline.core.errors import DataError
from pipeline.data.loader import TrainLoader
from pipeline.data.shard_index import ShardIndex
from pipeline.infra import engine as eng
from pipeline.infra.tracking import chart_keys
from pipeline.models.flops import classify_macs
from pipeline.models.sizes import get_spec
from pipeline.train import comm, loop
from pipeline.train.batch import batch_video, model_input
from pipeline.train.job_configs import DistillConfig
from pipeline.train.meter import Meter, format_eta
from pipeline.train.mixup import Mixup, soft_target_cross_entropy
from pipeline.train.model_registry import ModelCard, load_classifier
from pipeline.train.session import Session
from pipeline.train.supervised import (
    Setup,
    check_config,
    class_names,
    freeze_for_mode,
    save_weights,
    val_loader,
    validate,
)

log = logging.getLogger(__name__)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, summed over classes and averaged over
    the batch, in fp32 (Hinton et al. 2015: the ``T^2`` keeps the gradients' scale as ``T`` changes)."""
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    return temperature ** 2 * torch.sum(log_t.exp() * (log_t - log_s), dim=-1).mean()


def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) of features ``[B, D_s]`` and ``[B, D_t]`` (any
    widths): ``||norm(F_s F_s^T) - norm(F_t F_t^T)||_F^2 / B^2``, ``norm`` L2-normalising each row of the
    ``[B, B]`` Gram matrix, in fp32. Zero when the features differ by a rotation or a global scale."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
                         "are not of the same batch")
    b = student.shape[0]
    fs, ft = student.float().flatten(1), teacher.float().flatten(1)
    gs = F.normalize(fs @ fs.t(), p=2.0, dim=1)
    gt = F.normalize(ft @ ft.t(), p=2.0, dim=1)
    return (gs - gt).pow(2).sum() / (b * b)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None, temperature: float,
                 alpha: float, student_feats: torch.Tensor | None = None, teacher_feats: torch.Tensor | None = None,
                 feature_weight: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(loss, kd, ce, feat)``: ``alpha * kd + (1 - alpha) * ce`` against the soft ``target`` ``[B, K]``; without
    a target (unlabelled shards) the loss is ``kd`` and ``ce`` is None. With ``feature_weight > 0``,
    ``feature_weight * feat`` is added, ``feat`` being :func:`similarity_loss` of the pooled features
    (both needed); else ``feat`` is None and the loss is computed exactly as without the term."""
    kd = kd_loss(student, teacher, temperature)
    if target is None:
        loss, ce = kd, None
    else:
        ce = soft_target_cross_entropy(student, target)
        loss = alpha * kd + (1.0 - alpha) * ce
    if not feature_weight:
        return loss, kd, ce, None
    if student_feats is None or teacher_feats is None:
        raise ValueError("feature_weight > 0 needs the student's and the teacher's features")
    feat = similarity_loss(student_feats, teacher_feats)
    return loss + feature_weight * feat, kd, ce, feat


class FeatureTap:
    """The last output of ``module`` (a forward hook): the student's pooled features, taken from inside
    the DeepSpeed engine's own forward. ``remove()`` when done."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        self.value = output

    def pop(self) -> torch.Tensor:
        """The output of the last forward (then forgotten, so a stale one is never read twice)."""
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("the feature hook saw no forward since it was last read")
        return value

    def remove(self) -> None:
        self._handle.remove()
        self.value = None


def check_teacher(cfg: DistillConfig, card: ModelCard, labels: list[str]) -> None:
    """The teacher's card against the student's config and the shards' ``labels`` ([] = unlabelled):
    the same classes in the same order, the same clip (frames, side, sampling rate). One-line DataError."""
    where = cfg.distill.teacher
    if labels and list(card.class_names) != list(labels):
        raise DataError(f"distill.teacher {where} was fine-tuned on classes {list(card.class_names)}, the shards' "
                        f"labels are {list(labels)}: distil from a teacher of these labels, in this order")
    if not card.class_names:
        raise DataError(f"distill.teacher {where}: its card names no classes (a model folder written by "
                        "jobs.finetune or jobs.distill is needed)")
    clip = {"model.num_frames": ("num_frames", cfg.data.num_frames), "model.img_size": ("input_size", cfg.data.input_size),
            "data.sampling_rate": ("sampling_rate", cfg.data.sampling_rate)}
    for key, (field, mine) in clip.items():
        theirs = card.data.get(field)
        if theirs is not None and theirs != mine:
            raise DataError(f"{key}={mine} but distill.teacher {where} was trained on {field} {theirs}: the teacher "
                            f"sees the student's clip; set {key}={theirs}")


def load_teacher(cfg: DistillConfig, dtype: torch.dtype) -> tuple[torch.nn.Module, ModelCard]:
    """The teacher on the training device in ``dtype``, eval mode, frozen; and its card. Built under a
    forked RNG (its random init, overwritten by its weights, draws nothing from this rank's stream)."""
    device = comm.training_device()
    with torch.random.fork_rng(devices=[]):
        model, card = load_classifier(cfg.distill.teacher)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    comm.check_placement(model, device)
    return model, card


def setup(cfg: DistillConfig, session: Session, rank: int, world: int, labelled: bool) -> Setup:
    """The student's engine, loaders and position: fresh, or where the last checkpoint left off."""
    torch.manual_seed(cfg.run.seed)  # the same student init on every rank (and as fine-tuning's with this seed)
    loader = TrainLoader(cfg.data, rank, world, require_labels=labelled)
    spec = get_spec(cfg.model.name, **cfg.model.arch_overrides())
    clips = cfg.data.batch_size * world * cfg.deepspeed.gradient_accumulation_steps
    # the student's forward + backward; the teacher's forward is not counted
    meter = Meter(clips, spec.num_tokens, 6.0 * classify_macs(spec, cfg.model.num_classes), cfg.train.steps)
    build = loop.model_factory(cfg, "classify", lambda model: freeze_for_mode(model, cfg.finetune.mode))
    s = loop.setup(cfg, session, build, loader, meter, rank, world, state={"best": {"top1": -1.0, "step": 0}})
    return Setup(**vars(s), val=val_loader(cfg, rank, world))


def train_step(cfg: DistillConfig, s: Setup, batches: Any, mixer: Mixup, teacher: torch.nn.Module,
               labelled: bool, tap: FeatureTap | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over finite micro-batches: the means of the loss and its KD and CE terms (and
    the feature term with ``tap``, the hook on the student's ``fc_norm``: ``distill.feature_weight > 0``),
    and the train top-1 of the last micro-batch (against the mixed target's top class, or the teacher's
    top class without labels), all on the training device."""
    losses: list[torch.Tensor] = []
    kds: list[torch.Tensor] = []
    ces: list[torch.Tensor] = []
    feats: list[torch.Tensor] = []
    correct = torch.zeros(())
    alpha = cfg.distill.alpha if labelled else 1.0
    while len(losses) < s.engine.gradient_accumulation_steps():
        batch = loop.next_batch(s, batches)
        label = batch["label"] if labelled else torch.zeros_like(batch["label"])  # unlabelled: mixes the clip only
        video, target = model_input(batch_video(batch, s.engine.device), s.engine.device, s.dtype, mixer,
                                    label)
        teacher_feats = student_feats = None
        with torch.no_grad():  # the very clip the student gets
            if tap is None:
                teacher_logits = teacher(video)
            else:  # one forward, its pooled features kept
                teacher_feats = teacher.forward_features(video)
                teacher_logits = teacher.forward_head(teacher_feats)
        logits = s.engine(video)
        if tap is not None:
            student_feats = tap.pop()  # fc_norm's output in this very forward
        target = target.to(logits.device) if labelled else None
        loss, kd, ce, feat = distill_loss(logits, teacher_logits, target, cfg.distill.temperature, alpha,
                                          student_feats, teacher_feats, cfg.distill.feature_weight)
        if loop.backward_step(s, loss) is not None:
            losses.append(loss.detach().float())
            kds.append(kd.detach().float())
            if ce is not None:
                ces.append(ce.detach().float())
            if feat is not None:
                feats.append(feat.detach().float())
            wanted = target.argmax(-1) if target is not None else teacher_logits.argmax(-1)
            correct = (logits.detach().argmax(-1) == wanted).float().mean()
    s.meter.step()
    out = {"loss": torch.stack(losses).mean(), "loss/kd": torch.stack(kds).mean(), "train_top1": correct}
    if ces:
        out["loss/ce"] = torch.stack(ces).mean()
    if feats:
        out["loss/feat"] = torch.stack(feats).mean()
    return out


def distill(cfg: DistillConfig, session: Session) -> dict[str, Any]:
    """Run (or resume) distillation to ``train.steps``; returns the last metrics and the best top-1."""
    check_config(cfg)
    labelled = bool(ShardIndex.load(cfg.data.shards).labels)
    rank, world = eng.init_distributed()
    s = setup(cfg, session, rank, world, labelled)
    teacher, card = load_teacher(cfg, s.dtype)
    names = class_names(cfg) if labelled else list(card.class_names)
    if len(names) != cfg.model.num_classes or card.model.get("num_classes") != cfg.model.num_classes:
        raise DataError(f"the student has {cfg.model.num_classes} outputs, the teacher {card.model.get('num_classes')} "
                        f"and the data {len(names)} classes: launch through jobs.distill (it sets model.num_classes)")
    tracker = loop.start_tracker(cfg, "distill", rank, world, s.engine.device, s.run_id, s.startup,
                                 mode=cfg.finetune.mode, teacher=cfg.distill.teacher)
    s.run_id = tracker.run_id or s.run_id
    mixer = Mixup(cfg.mixup, cfg.model.num_classes)
    val_every = cfg.finetune.val_every or s.loader.steps_per_epoch
    batches, metrics, status = s.loader.forever(), {}, "FAILED"
    tap = None
    try:
        if cfg.distill.feature_weight > 0:  # the student's pooled features, from the engine's own forward
            tap = FeatureTap(s.engine.module.fc_norm)
        if s.val is not None and s.step == 0:  # the teacher's score on the same validation data, once
            teacher_val = validate(cfg, s, names, model=teacher, prefix="teacher_val")
            tracker.log_metrics(teacher_val, 0)
            if rank == 0:
                log.info("teacher val top-1 %.3f  top-5 %.3f", teacher_val["teacher_val_top1"],
                         teacher_val["teacher_val_top5"])
        while s.step < cfg.train.steps:
            means = train_step(cfg, s, batches, mixer, teacher, labelled, tap)
            s.step += 1
            lr = s.schedule.apply(s.engine, s.step)
            if loop.due(s.step, cfg.train.log_every, cfg.train.steps):
                metrics = {**loop.step_metrics(s, means), "epoch": s.step / s.loader.steps_per_epoch}
                tracker.log_metrics(chart_keys(metrics), s.step)
                if rank == 0:
                    feat = f"  feat {metrics['loss/feat']:.4f}" if "loss/feat" in metrics else ""
                    log.info("step %d/%d  loss %.4f  kd %.4f%s  lr %.2e  %.1f clips/s  eta %s", s.step,
                             cfg.train.steps, metrics["loss"], metrics["loss/kd"], feat, metrics["lr"],
                             metrics["clips_per_s"], format_eta(metrics["eta_s"]))
            if s.val is not None and loop.due(s.step, val_every, cfg.train.steps):
                val = validate(cfg, s, names)
                metrics.update(val)
                tracker.log_metrics(val, s.step)
                if rank == 0:
                    log.info("step %d  val top-1 %.3f  top-5 %.3f", s.step, val["val_top1"], val["val_top5"])
                if val["val_top1"] > s.state["best"]["top1"]:
                    s.state["best"] = {"top1": val["val_top1"], "step": s.step}
                    save_weights(cfg, s, names, "best", rank, val, source={"teacher": cfg.distill.teacher})
            if loop.due(s.step, cfg.train.checkpoint_every, cfg.train.steps):
                loop.save_checkpoint(s, session, {**metrics, "best_top1": s.state["best"]["top1"]}, lr, rank, world)
            loop.maybe_fail(cfg, s.step, rank)
        save_weights(cfg, s, names, "last", rank, metrics, source={"teacher": cfg.distill.teacher})
        best = s.state["best"]
        tracker.log_metrics({"best_val_top1": best["top1"], "best_step": best["step"]}, s.step)
        tracker.set_tags({"export": sio.join(cfg.run.output, cfg.run.name, "export")})
        status = "FINISHED"
    finally:
        if tap is not None:
            tap.remove()
        tracker.end(status)
    return {**metrics, "step": s.step, "run_id": s.run_id, "best": s.state["best"]}


__all__ = ["FeatureTap", "check_teacher", "distill", "distill_loss", "kd_loss", "load_teacher", "setup",
           "similarity_loss", "train_step"]
