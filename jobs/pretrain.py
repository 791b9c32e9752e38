"""Pre-train a VideoMAE V2 model on WebDataset shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.pretrain --config pretrain/demo [--set data.shards=DIR|s3://...] [--set scaling.num_workers=2]

``model.init`` (continued pre-training): a weights file or a run / export folder, local or
``s3://``, ``runs:/<run_id>/<path>`` or ``models:/<name>@<alias>``. Relaunching with the same ``run.name`` and ``run.output`` resumes from the last checkpoint (on
any number of workers). Embedded Ray by default; the cluster when ``RAY_ADDRESS`` is set; the
same command works as the entrypoint of ``ray job submit``.
"""

from __future__ import annotations

import logging
import os

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import to_toml
from pipeline.orchestration.ray_train import fit
from pipeline.train.model_registry import resolve_init
from pipeline.infra.tracking import resolve_uri
from pipeline.train.config import PretrainConfig
from pipeline.train.pretrain import check_config, pretrain

log = logging.getLogger("jobs.pretrain")


def absolute_paths(cfg: PretrainConfig) -> None:
    """Ray Train workers run in their own working directory: local paths must be absolute."""
    for section, key in (("data", "shards"), ("run", "output")):
        obj = getattr(cfg, section)
        value = getattr(obj, key)
        if value and not sio.is_remote(value):
            setattr(obj, key, os.path.abspath(value))


def run(cfg: PretrainConfig) -> int:
    check_config(cfg)
    absolute_paths(cfg)
    if cfg.tracking.enabled:  # decided here, where the user's working directory and env are
        cfg.tracking.tracking_uri = resolve_uri(cfg.tracking)
    # Once, here: the workers get one concrete local or s3:// file (each node caches its copy).
    cfg.model.init = resolve_init(cfg.model.init, cfg.tracking)
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    sio.write_text(sio.join(run_dir, "pretrain.toml"), to_toml(cfg))
    result = fit(cfg, pretrain)
    checkpoint = result.checkpoint
    if checkpoint is not None and cfg.train.export:
        from pipeline.train.export import export_weights

        with checkpoint.as_directory() as directory:
            files = export_weights(directory, cfg.model, sio.join(run_dir, "export"))
        print(f"exported: {files['pretrain_fp32.pt']}")
    print(f"run: {run_dir}  last checkpoint: {checkpoint.path if checkpoint else None}")
    print(f"metrics: {({k: round(v, 4) if isinstance(v, float) else v for k, v in (result.metrics or {}).items()})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(PretrainConfig, run, prog="jobs.pretrain", default_config="pretrain/demo"))
