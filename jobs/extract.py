"""Encoder features for every video of a shard split, written as Parquet or NumPy with the sample keys.

    python -m jobs.extract --config extract/demo --set data.shards=DIR --set data.split=train \
        --set model.init=runs/finetune/demo --set extract.mode=per_clip --set run.output=runs/extract/demo

``model.init``: ``models:/name@alias``, ``runs:/<run_id>/<path>``, a fine-tuning run or model folder, a
pre-training run or export folder, a weights file (ours or official; then ``model.*`` gives the
architecture), each local or ``s3://``, or empty
(random init, seeded: a baseline). With ``scaling.num_workers`` > 1, Ray Train workers each
extract their share of the split and write ``<run.output>/features/part-<rank>.{parquet,npz}``;
with 1 the job runs in this process (the same ``extract(cfg, session)``, with a one-rank
:class:`~pipeline.train.session.LocalSession`). Then the driver writes ``<run.output>/manifest.json`` (rows,
dim, mode, model, clip shape, parts) next to ``extract.toml`` (the resolved config) and logs the
manifest to an MLflow run. Read the features back with :func:`pipeline.train.extract.read_features`.
"""

from __future__ import annotations

import json
import logging
import tempfile

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import config_hash, to_toml
from pipeline.data.shard_index import ShardIndex
from pipeline.infra.tracking import make_tracker
from pipeline.models.model_config import init_weights
from pipeline.orchestration.driver import check_on_driver, resolve_on_driver
from pipeline.orchestration.ray_train import fit, scratch_storage
from pipeline.train.extract import MANIFEST, build_manifest, clear_parts, extract
from pipeline.train.job_configs import ExtractConfig
from pipeline.train.loop import require_shards
from pipeline.train.session import LocalSession

log = logging.getLogger("jobs.extract")


def prepare(cfg: ExtractConfig) -> ExtractConfig:
    """The resolved config (absolute paths, the tracking URI, the model resolved once and a model
    folder's architecture adopted); ``cfg`` is left as it was. Fails in one line."""
    require_shards(cfg)
    cfg = resolve_on_driver(cfg, model_folders=True)
    check_on_driver(cfg, task="classify")
    if not init_weights(cfg.model.init):
        log.warning("model.init is %r: features of a randomly initialised %s (seed %d)", cfg.model.init,
                    cfg.model.name, cfg.run.seed)
    return cfg


def _run_workers(cfg: ExtractConfig) -> None:
    if cfg.scaling.num_workers == 1:
        import torch

        if cfg.scaling.torch_threads:
            torch.set_num_threads(cfg.scaling.torch_threads)
        with tempfile.TemporaryDirectory(prefix="tubelet-extract-") as tmp:  # extraction writes no checkpoints
            extract(cfg, LocalSession(tmp))
        return
    fit(cfg, extract, loader_workers=cfg.data.num_workers, storage=scratch_storage(cfg.run.output))


def run(cfg: ExtractConfig) -> int:
    cfg = prepare(cfg)
    num_samples = ShardIndex.load(cfg.data.shards).num_samples(cfg.data.split)
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
