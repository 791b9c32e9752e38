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

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import ConfigError, to_toml
from pipeline.core.errors import DataError
from pipeline.models.model_config import init_weights
from pipeline.orchestration.driver import check_on_driver, resolve_on_driver
from pipeline.orchestration.ray_train import fit, scratch_storage
from pipeline.train.evaluate import evaluate
from pipeline.train.job_configs import EvaluateConfig
from pipeline.train.loop import require_shards

log = logging.getLogger("jobs.evaluate")


def prepare(cfg: EvaluateConfig) -> EvaluateConfig:
    """The resolved config (absolute paths, the tracking URI, ``model.init`` as one concrete model
    folder or weights file); ``cfg`` is left as it was. Fails in one line."""
    if not init_weights(cfg.model.init):  # '' or "random": nothing trained to evaluate
        raise ConfigError(f"model.init is {cfg.model.init or 'empty'}: name the model to evaluate "
                        "(models:/name@alias, a fine-tuning run folder or a weights file)")
    require_shards(cfg)
    cfg = resolve_on_driver(cfg, model_folders=True)
    index = check_on_driver(cfg, task="classify")
    if not index.labels:
        raise DataError(f"shards have no labels: {index.uri}/index.json lists none (evaluation needs labels)")
    return cfg


def run(cfg: EvaluateConfig) -> int:
    cfg = prepare(cfg)
    sio.write_text(sio.join(cfg.run.output, "evaluate.toml"), to_toml(cfg))
    fit(cfg, evaluate, loader_workers=cfg.data.num_workers, storage=scratch_storage(cfg.run.output))
    report = json.loads(sio.read_text(sio.join(cfg.run.output, "report.json")))
    print(f"top1 {report['top1']:.4f}  top5 {report.get('top5', float('nan')):.4f}  "
          f"{report['num_videos']} videos x {report['views_per_video']} views  -> {sio.join(cfg.run.output, 'report.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(EvaluateConfig, run, prog="jobs.evaluate", default_config="evaluate/demo"))
