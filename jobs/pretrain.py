"""Pre-train a VideoMAE V2 model on WebDataset shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.pretrain --config pretrain/demo [--set data.shards=DIR|s3://...] [--set scaling.num_workers=2]

Relaunching with the same ``run.name`` and ``run.output`` resumes from the last checkpoint (on
any number of workers). Embedded Ray by default; the cluster when ``RAY_ADDRESS`` is set; the
same command works as the entrypoint of ``ray job submit``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jobs._cli import job_main
from pipeline import io as sio
from pipeline.config import to_toml
from pipeline.orchestration import forwarded_env, ray_session, storage_for
from pipeline.tracking import resolve_uri
from pipeline.train.config import PretrainConfig
from pipeline.train.checkpoint import latest_checkpoint
from pipeline.train.pretrain import check_config

log = logging.getLogger("jobs.pretrain")


def _worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import torch

    from pipeline.orchestration import RayTrainSession
    from pipeline.train.pretrain import pretrain

    cfg: PretrainConfig = config["cfg"]
    torch.set_num_threads(cfg.scaling.torch_threads or cfg.scaling.cpus_per_worker)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Relaunching a run by name, or restarting workers after a crash, continues from the run's
    # newest complete checkpoint in storage: looked up by the workers themselves, since Ray Train
    # V2 hands back no checkpoint of an earlier launch nor, here, after a worker-group restart.
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    pretrain(cfg, RayTrainSession(find_checkpoint=lambda: latest_checkpoint(run_dir)))


def trainer(cfg: PretrainConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, storage_fs = storage_for(cfg.run.output)
    return TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
                             # the driver's storage / tracking env, also when Ray was started by someone else
                             worker_runtime_env={"env_vars": forwarded_env()},
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints)),
    )


def absolute_paths(cfg: PretrainConfig) -> None:
    """Ray Train workers run in their own working directory: local paths must be absolute."""
    for section, key in (("data", "shards"), ("run", "output"), ("model", "init")):
        obj = getattr(cfg, section)
        value = getattr(obj, key)
        if value and not sio.is_remote(value):
            setattr(obj, key, os.path.abspath(value))


def run(cfg: PretrainConfig) -> int:
    check_config(cfg)
    absolute_paths(cfg)
    if cfg.tracking.enabled:  # decided here, where the user's working directory and env are
        cfg.tracking.tracking_uri = resolve_uri(cfg.tracking)
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    sio.write_text(sio.join(run_dir, "pretrain.toml"), to_toml(cfg))
    # Logical CPUs may exceed physical ones: Ray Train's controller needs a slot besides the workers.
    cpus = max(os.cpu_count() or 1, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 1)
    with ray_session(num_cpus=cpus):
        result = trainer(cfg).fit()
        if result.error is not None:
            raise result.error
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
