"""Every job of this package, in one explicit list: what ``jobs.pipeline``, ``jobs.submit`` and
``make jobs`` (``python -m jobs --list``) know about.

    job = JOBS["pretrain"]
    job.module                 # "jobs.pretrain": run as python -m jobs.pretrain
    job.config_class()         # PretrainConfig (imports jobs.pretrain, never runs it)

A job with a ``config`` takes ``--config FILE [--set k=v ...]`` (its ``__main__`` goes through
``jobs._cli.job_main``) and can be submitted to a cluster. Nothing here imports a job module
until asked: ``jobs.submit`` reads this before anything may import ray.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

PACKAGE = "jobs"


@dataclass(frozen=True)
class Job:
    """One runnable module of ``jobs/``."""

    name: str  # jobs/<name>.py
    description: str
    config: str = ""  # its config dataclass ('' = no --config: it cannot be submitted)
    ray_train: bool = False  # runs its ranks as Ray Train workers (DeepSpeed for the training jobs)

    @property
    def module(self) -> str:
        return f"{PACKAGE}.{self.name}"

    def load(self) -> ModuleType:
        """The job's module, imported (its ``__main__`` block does not run)."""
        return importlib.import_module(self.module)

    def config_class(self) -> type:
        if not self.config:
            raise LookupError(f"jobs.{self.name} takes no --config")
        return getattr(self.load(), self.config)


_ALL = (
    Job("dataset", "build a manifest (uri, label, split) of a dataset", "DatasetJobConfig"),
    Job("shard", "shard a manifest into WebDataset tars with Ray tasks", "ShardJobConfig"),
    Job("pretrain", "pre-train VideoMAE V2 on shards (DeepSpeed ZeRO)", "PretrainConfig", ray_train=True),
    Job("finetune", "fine-tune a classifier on labelled shards (DeepSpeed ZeRO)", "FinetuneConfig", ray_train=True),
    Job("distill", "distil a fine-tuned teacher classifier into a smaller student (DeepSpeed ZeRO)", "DistillConfig",
        ray_train=True),
    Job("evaluate", "multi-view evaluation of a classifier on a split", "EvaluateConfig", ray_train=True),
    Job("extract", "encoder features of every video of a split (Parquet or NumPy)", "ExtractConfig",
        ray_train=True),
    Job("pipeline", "shard -> pre-train -> fine-tune -> evaluate in one resumable job", "PipelineConfig"),
    Job("plan", "parameters, FLOPs per clip and memory per GPU of a model", "PlanConfig"),
    Job("predict", "classify video files with a registered or exported classifier"),
    Job("submit", "submit a job to the Ray cluster at RAY_ADDRESS; list, follow, stop jobs there"),
)
JOBS: dict[str, Job] = {job.name: job for job in _ALL}


def configurable() -> list[str]:
    """Names of the jobs that take ``--config`` (what ``jobs.submit`` can send), in list order."""
    return [job.name for job in _ALL if job.config]


def listing() -> str:
    """One line per job: name, config class, whether it runs on Ray Train, what it does."""
    return "\n".join(f"{j.name:<9} {j.config or '-':<17} {'Ray Train' if j.ray_train else '':<9} {j.description}"
                     for j in _ALL)


__all__ = ["JOBS", "Job", "PACKAGE", "configurable", "listing"]
