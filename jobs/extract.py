"""Encoder features for every video of a shard split, written as Parquet or NumPy with the sample keys.

    python -m jobs.extract --config extract/demo --set data.shards=DIR --set data.split=train \
        --set model.init=runs/finetune/demo --set extract.mode=per_clip --set run.output=runs/extract/demo

``model.init``: ``models:/name@alias``, ``runs:/<run_id>/<path>``, a fine-tuning run or model folder, a
pre-training run or export folder, a weights file (ours or official; then ``model.*`` gives the
architecture), each local or ``s3://``, or empty
(random init, seeded: a baseline). With ``scaling.num_workers`` > 1, Ray Train workers each
extract their share of the split and write ``<run.output>/features/part-<rank>.{parquet,npz}``;
with 1 the job runs in this process. Then the driver writes ``<run.output>/manifest.json`` (rows,
dim, mode, model, clip shape, parts) next to ``extract.toml`` (the resolved config) and logs the
manifest to an MLflow run. Read the features back with :func:`pipeline.train.extract.read_features`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import config_hash, to_toml
from pipeline.data.shard_index import ShardIndex
from pipeline.core.errors import DataError
from pipeline.train.extract import MANIFEST, ExtractConfig, build_manifest, check_clip_shape, clear_parts
from pipeline.orchestration.ray_train import fit, scratch_storage
from pipeline.train.model_registry import resolve_init
from pipeline.infra.tracking import make_tracker, resolve_uri

log = logging.getLogger("jobs.extract")


def _loop(cfg: ExtractConfig, session: Any) -> None:
    """Every Ray Train worker: its share of the split, its own part file."""
    import ray.train

    from pipeline.train.extract import extract

    context = ray.train.get_context()
    extract(cfg, context.get_world_rank(), context.get_world_size())


def prepare(cfg: ExtractConfig) -> int:
    """Absolute paths, the tracking URI, the model resolved once, the clip shape checked; returns
    the split's sample count. Fails in one line."""
    if not cfg.data.shards:
        raise DataError("data.shards is not set (a folder or s3:// prefix written by jobs.shard)")
    for obj, key in ((cfg.data, "shards"), (cfg.run, "output")):
        value = getattr(obj, key)
        if value and not sio.is_remote(value):
            setattr(obj, key, os.path.abspath(value))  # Ray Train workers run in their own directory
    if cfg.tracking.enabled:
        cfg.tracking.tracking_uri = resolve_uri(cfg.tracking)
    # Once, here: the workers get a concrete model folder or weights file (local or s3://).
    cfg.model.init = resolve_init(cfg.model.init, cfg.tracking, model_folders=True)
    if not cfg.model.init:
        log.warning("model.init is empty: features of a randomly initialised %s (seed %d)", cfg.model.name, cfg.run.seed)
    check_clip_shape(cfg)
    return ShardIndex.load(cfg.data.shards).num_samples(cfg.data.split)


def _run_workers(cfg: ExtractConfig) -> None:
    if cfg.scaling.num_workers == 1:
        import torch

        from pipeline.train.extract import extract

        if cfg.scaling.torch_threads:
            torch.set_num_threads(cfg.scaling.torch_threads)
        extract(cfg, 0, 1)
        return
    fit(cfg, _loop, storage=scratch_storage(cfg.run.output))


def run(cfg: ExtractConfig) -> int:
    num_samples = prepare(cfg)
    clear_parts(cfg.run.output)
    sio.write_text(sio.join(cfg.run.output, "extract.toml"), to_toml(cfg))
    tracker = make_tracker(cfg.tracking, 0)
    tracker.start(run_name=cfg.run.name, config=cfg, tags={"stage": "extract", "model": cfg.model.init or "random",
                                                           "config_hash": config_hash(cfg)})
    status = "FAILED"
    try:
        _run_workers(cfg)
        manifest = build_manifest(cfg, num_samples)
        sio.write_text(sio.join(cfg.run.output, MANIFEST), json.dumps(manifest, indent=1))
        tracker.log_dict(manifest, MANIFEST)
        tracker.log_metrics({"rows": manifest["rows"], "videos": manifest["videos"],
                             "failed_videos": manifest["failed_videos"]}, 0)
        status = "FINISHED"
    finally:
        tracker.end(status)
    print(f"{manifest['rows']} rows ({manifest['videos']} of {num_samples} videos, {manifest['mode']}) x "
          f"{manifest['dim']} -> {sio.join(cfg.run.output, 'features')}/ ({manifest['format']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ExtractConfig, run, prog="jobs.extract", default_config="extract/demo"))
