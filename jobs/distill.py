"""Distil a fine-tuned teacher classifier into a smaller student with Ray Train + DeepSpeed ZeRO.

    python -m jobs.distill --config distill/demo --set data.shards=DIR|s3://... \
        --set distill.teacher=runs/finetune/demo [--set model.init=runs/pretrain/demo] \
        [--set tracking.registered_model=motion-student]

``distill.teacher``: the classifier that teaches, as ``model.init`` of a fine-tuned classifier is
given: a model folder, a fine-tuning (or distillation) run folder (its ``export/best``, else
``export/last``), ``runs:/<run_id>/<path>`` or ``models:/name@alias`` / ``models:/name/<version>``.
It is resolved here, once, to its model folder; its classes must be the shards' labels, in order
(or, on shards without labels, they become the student's head), and its clip the student's:
otherwise one line, before Ray starts. ``model.init`` is the student's, as in ``jobs.finetune``
(a pre-trained encoder, or ``random``). The loss is in :mod:`pipeline.train.distill`. At the end
``<run>/export/{best,last}`` hold the student's model folders (``jobs.evaluate`` and
``jobs.predict`` take them); with ``tracking.registered_model`` the kept one is registered and
``finetune.registered_alias`` moves per ``finetune.promote``, as in fine-tuning.
"""

from __future__ import annotations

import logging

from jobs._cli import job_main
from jobs.finetune import kept_folder, train_and_register  # noqa: F401 - kept_folder: benchmarks read it here
from pipeline.core import io as sio
from pipeline.core.config import ConfigError, with_values
from pipeline.core.errors import DataError, TubeletError
from pipeline.data.shard_index import ShardIndex
from pipeline.models.model_config import RANDOM_INIT
from pipeline.orchestration.driver import check_on_driver, resolve_on_driver
from pipeline.train.distill import check_teacher, distill
from pipeline.train.job_configs import DistillConfig
from pipeline.train.model_registry import CARD, FINETUNE_INIT_FILES, read_card, resolve_init
from pipeline.train.supervised import check_config, class_names

log = logging.getLogger("jobs.distill")


def resolve_teacher(spec: str, tracking_uri: str = "") -> str:
    """The model folder ``distill.teacher`` names (local or s3://); one-line error naming the key."""
    if not spec:
        raise ConfigError("distill.teacher is empty: name the fine-tuned classifier that teaches (a model folder, "
                          "a fine-tuning run folder, runs:/<run_id>/<path> or models:/<name>@<alias>)")
    try:
        folder = resolve_init(spec, tracking_uri or None, FINETUNE_INIT_FILES, model_folders=True)
    except TubeletError as exc:
        raise type(exc)(str(exc).replace(f"model.init {spec}", f"distill.teacher {spec}")) from None
    if not sio.exists(sio.join(folder, CARD)):
        raise DataError(f"distill.teacher {spec}: {folder} is no model folder (no {CARD}): the teacher must be a "
                        "classifier written by jobs.finetune or jobs.distill")
    return folder


def prepare(cfg: DistillConfig) -> DistillConfig:
    """Driver-side checks, then the resolved config (absolute paths, tracking URI, the student's
    ``model.init`` as one file, ``distill.teacher`` as its model folder, ``model.num_classes`` from
    the labels, or the teacher's classes on unlabelled shards); ``cfg`` is left as it was. One line on failure."""
    check_config(cfg)
    if cfg.data.sources or cfg.data.exclude_shards:
        raise ConfigError("data.sources / data.exclude_shards are not read by jobs.distill: it distils on one shard "
                          "set (data.shards); post-pre-train on a labelled hybrid with jobs.finetune")
    cfg = resolve_on_driver(cfg, FINETUNE_INIT_FILES)
    teacher = resolve_teacher(cfg.distill.teacher, cfg.tracking.tracking_uri if cfg.tracking.enabled else "")
    cfg = with_values(cfg, {"distill.teacher": teacher})
    card = read_card(teacher)
    index = ShardIndex.load(cfg.data.shards)
    if not index.labels and cfg.finetune.val_split:
        raise DataError(f"shards have no labels ({index.uri}/index.json): validation needs them; set "
                        "finetune.val_split= to distil on unlabelled shards (KD only)")
    index = check_on_driver(cfg, train=True, val_split=cfg.finetune.val_split, task="classify")
    check_teacher(cfg, card, list(index.labels))
    classes = len(index.labels) if index.labels else len(card.class_names)
    if (cfg.finetune.classes_from_data or not index.labels) and classes != cfg.model.num_classes:
        print(f"model.num_classes: {cfg.model.num_classes} -> {classes} "
              f"({'labels of the shard index' if index.labels else 'the classes of distill.teacher'})")
        cfg = with_values(cfg, {"model.num_classes": classes})
    if index.labels:
        class_names(cfg, index)
    if card.model.get("num_classes") != cfg.model.num_classes:
        raise DataError(f"distill.teacher {teacher} has {card.model.get('num_classes')} outputs, the student "
                        f"model.num_classes={cfg.model.num_classes}: set finetune.classes_from_data=true")
    score = card.metrics.get("val_top1")
    print(f"teacher {teacher}: {card.model.get('name')}, {len(card.class_names)} classes"
          + (f", val top-1 {score:.3f} (its card)" if score is not None else ""))
    if cfg.model.init == RANDOM_INIT:
        print(f"model.init=random: the student starts from a random init (run.seed {cfg.run.seed})")
    return cfg


def run(cfg: DistillConfig) -> int:
    return train_and_register(prepare(cfg), distill, "distill.toml")


if __name__ == "__main__":
    raise SystemExit(job_main(DistillConfig, run, prog="jobs.distill", default_config="distill/demo"))
