"""Pre-train a VideoMAE V2 model on WebDataset shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.pretrain --config pretrain/demo [--set data.shards=DIR|s3://...] [--set scaling.num_workers=2]

``model.init`` (continued pre-training): a weights file or a run / export folder, local or
``s3://``, ``runs:/<run_id>/<path>`` or ``models:/<name>@<alias>``. Relaunching with the same ``run.name`` and ``run.output`` resumes from the last checkpoint (on
any number of workers). Embedded Ray by default; the cluster when ``RAY_ADDRESS`` is set; the
same command works as the entrypoint of ``ray job submit``.
"""

from __future__ import annotations

import logging

from jobs._cli import job_main, rounded
from pipeline.core import io as sio
from pipeline.core.config import to_toml
from pipeline.orchestration.driver import check_on_driver, resolve_on_driver
from pipeline.orchestration.ray_train import fit
from pipeline.train.job_configs import PretrainConfig
from pipeline.train.pretrain import check_config, pretrain

log = logging.getLogger("jobs.pretrain")


def prepare(cfg: PretrainConfig) -> PretrainConfig:
    """Driver-side checks, then the resolved config (absolute paths, tracking URI, ``model.init`` as
    one concrete file, its card's recipe), checked against the shard index before Ray starts;
    ``cfg`` is left as it was. Fails in one line."""
    check_config(cfg)
    cfg = resolve_on_driver(cfg)
    check_on_driver(cfg, train=True, task="pretrain")
    return cfg


def run(cfg: PretrainConfig) -> int:
    cfg = prepare(cfg)
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    sio.write_text(sio.join(run_dir, "pretrain.toml"), to_toml(cfg))
    result = fit(cfg, pretrain, keep_checkpoints=cfg.train.keep_checkpoints, loader_workers=cfg.data.num_workers)
    checkpoint = result.checkpoint
    if checkpoint is not None and cfg.train.export:
        from pipeline.train.export import export_weights

        with checkpoint.as_directory() as directory:
            files = export_weights(directory, cfg.model, sio.join(run_dir, "export"), cfg.data,
                                   {"run": cfg.run.name, "steps": cfg.train.steps})
        print(f"exported: {files['pretrain_fp32.pt']}")
    print(f"run: {run_dir}  last checkpoint: {checkpoint.path if checkpoint else None}")
    print(f"metrics: {rounded(result.metrics or {})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(PretrainConfig, run, prog="jobs.pretrain", default_config="pretrain/demo"))
