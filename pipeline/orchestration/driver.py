"""What a training-family launcher (``jobs.pretrain``, ``finetune``, ``evaluate``, ``extract``) resolves
on its driver, once, before any worker starts: a new config, the given one left as it was.

Ray Train workers run in their own working directory and environment, so what depends on the
user's (relative paths, the tracking URI from ``MLFLOW_TRACKING_URI``, ``model.init`` names
such as ``models:/name@alias`` or a run folder) is made concrete here.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pipeline.core import io as sio
from pipeline.core.config import with_values
from pipeline.infra.tracking import resolve_uri
from pipeline.train.model_registry import WEIGHT_FILES, resolve_init

C = TypeVar("C")


def resolve_on_driver(cfg: C, candidates: tuple[str, ...] = WEIGHT_FILES, model_folders: bool = False) -> C:
    """A copy of ``cfg`` with absolute local ``data.shards`` and ``run.output``, the resolved
    ``tracking.tracking_uri`` (when ``tracking.enabled``) and ``model.init`` resolved once by
    :func:`~pipeline.train.model_registry.resolve_init` (``candidates``, ``model_folders``): the
    workers get one concrete local or ``s3://`` file or model folder (each node caches its copy)."""
    c: Any = cfg
    values: dict[str, Any] = {}
    for key, value in (("data.shards", c.data.shards), ("run.output", c.run.output)):
        if value and not sio.is_remote(value):
            values[key] = os.path.abspath(value)
    tracking: Any = c.tracking
    if c.tracking.enabled:  # decided here, where the user's working directory and env are
        tracking = values["tracking.tracking_uri"] = resolve_uri(c.tracking)
    values["model.init"] = resolve_init(c.model.init, tracking, candidates, model_folders)
    return with_values(cfg, values)
