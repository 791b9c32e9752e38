"""Multi-view evaluation of a classifier on a split of a shard set, on Ray Train workers.

    python -m jobs.evaluate --config evaluate/demo --set data.shards=DIR --set data.split=val \
        --set model.init=models:/motion-vit@champion --set run.output=runs/evaluate/demo

``model.init``: ``models:/name@alias`` (or ``/<version>``), ``runs:/<run_id>/<path>``, a fine-tuning
run folder, a model folder, or a weights file (then ``model.*`` gives the architecture), local or
``s3://``. Writes ``<run.output>/report.json`` (``top1``,
``top5``, ``per_class``, ``confusion``, ``num_clips`` x ``num_crops`` views per video, the video
count) and ``confusion.png``, and logs them to an MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import to_toml
from pipeline.data.shard_index import ShardIndex
from pipeline.core.errors import DataError
from pipeline.orchestration.ray_train import fit, scratch_storage
from pipeline.train.model_registry import resolve_init
from pipeline.infra.tracking import resolve_uri
from pipeline.train.finetune_config import EvaluateConfig

log = logging.getLogger("jobs.evaluate")


def _loop(cfg: EvaluateConfig, session: Any) -> None:
    """Every Ray Train worker: its share of the split's views (rank 0 gathers and reports)."""
    from pipeline.train.evaluate import evaluate

    evaluate(cfg)


def prepare(cfg: EvaluateConfig) -> None:
    """Absolute paths, the tracking URI, ``model.init`` resolved once; fails in one line."""
    if not cfg.model.init:
        raise DataError("model.init is not set: models:/name@alias, a fine-tuning run folder or a weights file")
    if not cfg.data.shards:
        raise DataError("data.shards is not set (a folder or s3:// prefix written by jobs.shard)")
    for obj, key in ((cfg.data, "shards"), (cfg.run, "output")):
        value = getattr(obj, key)
        if value and not sio.is_remote(value):
            setattr(obj, key, os.path.abspath(value))
    if cfg.tracking.enabled:
        cfg.tracking.tracking_uri = resolve_uri(cfg.tracking)
    # Once, here: the workers get a concrete model folder or weights file (local or s3://).
    cfg.model.init = resolve_init(cfg.model.init, cfg.tracking, model_folders=True)
    index = ShardIndex.load(cfg.data.shards)
    if not index.labels:
        raise DataError(f"shards have no labels: {index.uri}/index.json lists none (evaluation needs labels)")
    if not index.split(cfg.data.split):
        raise DataError(f"split {cfg.data.split!r} has no shards in {cfg.data.shards}")


def run(cfg: EvaluateConfig) -> int:
    prepare(cfg)
    sio.write_text(sio.join(cfg.run.output, "evaluate.toml"), to_toml(cfg))
    fit(cfg, _loop, storage=scratch_storage(cfg.run.output))
    report = json.loads(sio.read_text(sio.join(cfg.run.output, "report.json")))
    print(f"top1 {report['top1']:.4f}  top5 {report.get('top5', float('nan')):.4f}  "
          f"{report['num_videos']} videos x {report['views_per_video']} views  -> {sio.join(cfg.run.output, 'report.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(EvaluateConfig, run, prog="jobs.evaluate", default_config="evaluate/demo"))
