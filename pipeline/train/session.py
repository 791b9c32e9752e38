"""What a per-rank loop ``loop(cfg, session)`` is handed: its rank and the world size, and where
checkpoints go and come from: a Ray Train run, or a plain folder (tests, one process).

Every loop (``pretrain``, ``finetune``, ``evaluate``, ``extract``) reads ``rank``, ``local_rank``
and ``world_size``, and marks its start-up phases on ``startup``; the training loops also call ``restore_dir()``, ``staging_dir(step)`` and
``report(metrics, dir)``. :class:`pipeline.orchestration.ray_train.RayTrainSession` implements
them with Ray Train's context and storage.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch.distributed as dist

from pipeline.train.meter import StartupClock


class Session(Protocol):
    rank: int
    local_rank: int
    world_size: int
    startup: StartupClock  # from the job's launch on the driver

    def restore_dir(self) -> contextlib.AbstractContextManager[str | None]: ...
    def staging_dir(self, step: int) -> Path: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class LocalSession:
    """Checkpoints as ``<root>/checkpoint_<step>/`` folders; all ranks must share ``root``.

    A checkpoint becomes visible by one rename after every rank has written its part, so a crash
    mid-save never leaves a folder that looks complete.
    """

    def __init__(self, root: str | Path, rank: int = 0, local_rank: int = 0, world_size: int = 1) -> None:
        self.root, self.rank, self.local_rank, self.world_size = Path(root), rank, local_rank, world_size
        self.startup = StartupClock()  # launched now; the loop marks the rest
        self.startup.mark("workers")
        self.root.mkdir(parents=True, exist_ok=True)
        self.reports: list[dict[str, Any]] = []

    def latest(self) -> Path | None:
        done = sorted(p for p in self.root.glob("checkpoint_*") if p.is_dir())
        return done[-1] if done else None

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[str | None]:
        latest = self.latest()
        yield str(latest) if latest else None

    def staging_dir(self, step: int) -> Path:
        return self.root / f".staging_{step:08d}"

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        if dist.is_initialized():
            dist.barrier()  # every rank has written its shard
        if self.rank == 0:
            final = self.root / f"checkpoint_{checkpoint_dir.name.removeprefix('.staging_')}"
            if final.exists():
                shutil.rmtree(final)
            os.replace(checkpoint_dir, final)
        if dist.is_initialized():
            dist.barrier()
