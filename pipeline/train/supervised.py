"""What the loops that train a classifier share (``finetune``, ``distill``): the checks of the
labels against the head, the encoder freezing of a probe or adapter run, the validation loader
and pass, what a validation top-1 was measured on, and the model folders ``<run>/export/{best,last}``.

The configs passed here are a :class:`~pipeline.train.job_configs.FinetuneConfig` or a
:class:`~pipeline.train.job_configs.DistillConfig`: both have ``[model]``, ``[data]`` and
``[finetune]`` (mode, validation, what is kept) of the same classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.core.config import ConfigError, to_dict
from pipeline.core.errors import DataError
from pipeline.data.hybrid import Exclusions, find_exclusions, merge_labels, read_exclusions, write_exclusions
from pipeline.data.loader import EvalLoader, eval_loader, require_global_batch
from pipeline.data.shard_index import ShardIndex
from pipeline.infra import engine as eng
from pipeline.train import loop
from pipeline.train.job_configs import DistillConfig, FinetuneConfig
from pipeline.train.model_registry import ModelCard, ValidationData, recipe_data, write_model_folder
from pipeline.train.scoring import evaluate_pass

ClassifierJob = FinetuneConfig | DistillConfig  # the configs of the loops that train a classifier


@dataclass
class Setup(loop.Setup):
    """The training loop's setup (``state["best"]``: ``{"top1", "step"}`` of the best validation so
    far) and the validation loader."""

    val: EvalLoader | None = None


def check_config(cfg: ClassifierJob) -> None:
    """What the config alone can show is wrong (the clip size needs no check: the data follows the model),
    and labels that fit the head."""
    loop.require_shards(cfg)
    if not cfg.model.init:
        raise ConfigError("model.init is empty: name the weights to fine-tune from (a pre-training run folder, a "
                        "weights file, runs:/<run_id>/<path> or models:/<name>@<alias>), or set model.init=random "
                        "for a random-init baseline")
    if cfg.data.sources and cfg.finetune.val_split:
        raise ConfigError(f"finetune.val_split={cfg.finetune.val_split!r} with data.sources: validation reads one "
                          "shard set in its own label space; set finetune.val_split='' (the last weights are kept)")
    if (cfg.finetune.mode == "adapter") != (cfg.model.adapter_dim > 0):
        raise DataError("finetune.mode=adapter and model.adapter_dim > 0 go together "
                        f"(got mode={cfg.finetune.mode}, adapter_dim={cfg.model.adapter_dim})")


def data_classes(cfg: ClassifierJob, index: ShardIndex | None = None) -> list[str]:
    """The label names of the data: the shard index's, or with ``data.sources`` their merged label
    space (:func:`pipeline.data.hybrid.merge_labels`). DataError when a shard set has no labels."""
    indexes = [ShardIndex.load(src) for src in cfg.data.sources] if cfg.data.sources else [
        index or ShardIndex.load(cfg.data.shards)]
    for ix in indexes:
        if not ix.labels:
            raise DataError(f"shards have no labels: {ix.uri}/index.json lists none "
                            "(shard a manifest with a label column to fine-tune)")
    if cfg.data.sources:
        return list(merge_labels([ix.labels for ix in indexes]).names)
    return list(indexes[0].labels)


def class_names(cfg: ClassifierJob, index: ShardIndex | None = None, names: list[str] | None = None) -> list[str]:
    """Label names of the data (:func:`data_classes`, unless already read: ``names``); DataError if
    more than the head has outputs."""
    names = data_classes(cfg, index) if names is None else names
    if len(names) > cfg.model.num_classes:
        raise DataError(f"the shards have {len(names)} classes but model.num_classes is "
                        f"{cfg.model.num_classes} (or set finetune.classes_from_data=true)")
    return names


def leaves_out(cfg: ClassifierJob) -> bool:
    """Whether the job's driver looks for samples to leave out (several sources, or held-out shard sets)."""
    return bool(cfg.data.sources or cfg.data.exclude_shards)


def training_uris(cfg: ClassifierJob) -> list[str]:
    """The training shard sets, as the loader names them (``data.sources``, else ``data.shards``)."""
    return list(cfg.data.sources) or [cfg.data.shards]


def write_left_out(cfg: ClassifierJob) -> Exclusions:
    """On the driver: find the training samples to leave out (:func:`pipeline.data.hybrid.find_exclusions`)
    and list them in the run folder, where every rank's loader reads them."""
    held_out = [(ShardIndex.load(src), cfg.data.exclude_splits) for src in cfg.data.exclude_shards]
    sources = [ShardIndex.load(src) for src in training_uris(cfg)]
    found = find_exclusions(sources, cfg.data.split, held_out)
    write_exclusions(sio.join(cfg.run.output, cfg.run.name), found)
    total = sum(ix.num_samples(cfg.data.split) for ix in sources)
    require_global_batch(cfg.data, total - found.count, cfg.scaling.num_workers,
                         f"the training data once {found.count} samples are left out")
    return found


def left_out(cfg: ClassifierJob) -> dict[int, frozenset[str]] | None:
    """On every rank: the keys each training source leaves out, as the driver listed them (None: not asked)."""
    if not leaves_out(cfg):
        return None
    return read_exclusions(sio.join(cfg.run.output, cfg.run.name), training_uris(cfg))


def freeze_for_mode(model: torch.nn.Module, mode: str) -> None:
    """Freeze the encoder for ``linear_probe`` and ``adapter`` tuning (adapters stay trainable).

    Frozen parameters have ``requires_grad=False``, so :func:`~pipeline.models.param_groups`
    leaves them out of the optimizer (no Adam state for them either: the point for big encoders).
    """
    if mode == "full":
        return
    for name, p in model.encoder.named_parameters():
        p.requires_grad_(mode == "adapter" and ".adapter." in name)


def val_loader(cfg: ClassifierJob, rank: int, world: int) -> EvalLoader | None:
    """This rank's share of ``finetune.val_split`` (None without validation)."""
    if not cfg.finetune.val_split:
        return None
    data = dataclasses.replace(cfg.data, split=cfg.finetune.val_split, test_num_clips=cfg.finetune.val_num_clips,
                               test_num_crops=cfg.finetune.val_num_crops)
    return eval_loader(data, rank, world, require_labels=True)


def validation_data(cfg: ClassifierJob, index: ShardIndex | None = None) -> ValidationData | None:
    """What the validation top-1 of this config is measured on (the shards, ``finetune.val_split``
    and the views :func:`val_loader` cuts); None without validation."""
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


def validate(cfg: ClassifierJob, s: Setup, names: list[str], model: torch.nn.Module | None = None,
             prefix: str = "val") -> dict[str, float]:
    """Top-1 / top-5 / mean class accuracy on the validation split (every video once, all ranks) of
    the trained model, or of ``model`` (a plain module on the training device, e.g. a teacher)."""
    assert s.val is not None
    lockstep = model is None and cfg.deepspeed.zero_stage == 3  # a ZeRO-3 forward is collective
    result = evaluate_pass(s.engine.module if model is None else model, s.val, s.dtype, lockstep=lockstep)
    report = result.report(names)
    return {f"{prefix}_top1": report["top1"], f"{prefix}_top5": report["top5"],
            f"{prefix}_mean_class_acc": report["mean_class_accuracy"], f"{prefix}_videos": report["num_videos"]}


def save_weights(cfg: ClassifierJob, s: Setup, names: list[str], which: str, rank: int,
                 metrics: dict[str, float], source: dict[str, Any] | None = None) -> None:
    """Write the model folder ``<run>/export/<which>`` from the live weights (collective under ZeRO-3);
    ``source`` adds to the card's provenance."""
    module = s.engine.module
    with eng.gathered(module):
        if rank == 0:
            arch = {**to_dict(cfg.model, redact=False), "patch_size": module.spec.patch_size}  # 0 made concrete
            card = ModelCard(model=arch, class_names=names,
                             data={**recipe_data(cfg.data), "test_num_clips": cfg.data.test_num_clips,
                                   "test_num_crops": cfg.data.test_num_crops},
                             metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                             source={"run": cfg.run.name, "step": s.step, "init": cfg.model.init,
                                     "mode": cfg.finetune.mode, "mlflow_run_id": s.run_id, **(source or {})})
            write_model_folder(module.state_dict(), card, sio.join(cfg.run.output, cfg.run.name, "export", which))


__all__ = ["ClassifierJob", "Setup", "check_config", "class_names", "data_classes", "freeze_for_mode", "left_out",
           "leaves_out", "save_weights", "training_uris", "val_loader", "validate", "validation_data",
           "write_left_out"]
