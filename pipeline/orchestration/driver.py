"""What a training-family launcher (``jobs.pretrain``, ``finetune``, ``evaluate``, ``extract``) resolves
on its driver, once, before any worker starts: a new config, the given one left as it was.

Ray Train workers run in their own working directory and environment, so what depends on the
user's (relative paths, the tracking URI from ``MLFLOW_TRACKING_URI``, ``model.init`` names
such as ``models:/name@alias`` or a run folder) is made concrete here.
"""

from __future__ import annotations

import logging
import os
from typing import Any, TypeVar

from pipeline.core import io as sio
from pipeline.core.config import with_values
from pipeline.infra.tracking import resolve_uri
from pipeline.train.model_registry import WEIGHT_FILES, card_architecture, resolve_init

log = logging.getLogger(__name__)

C = TypeVar("C")


def resolve_on_driver(cfg: C, candidates: tuple[str, ...] = WEIGHT_FILES, model_folders: bool = False) -> C:
    """A copy of ``cfg`` with absolute local ``data.shards`` and ``run.output``, the resolved
    ``tracking.tracking_uri`` (when ``tracking.enabled``) and ``model.init`` resolved once by
    :func:`~pipeline.train.model_registry.resolve_init` (``candidates``, ``model_folders``): the
    workers get one concrete local or ``s3://`` file or model folder (each node caches its copy).

    With ``model_folders`` (jobs that load a classifier), a model folder brings its architecture:
    the keys its card records replace the config's (:func:`adopt_card`), so the loader cuts the
    clip the model was trained on."""
    c: Any = cfg
    values: dict[str, Any] = {}
    for key, value in (("data.shards", c.data.shards), ("run.output", c.run.output)):
        if value and not sio.is_remote(value):
            values[key] = os.path.abspath(value)
    tracking: Any = c.tracking
    if c.tracking.enabled:  # decided here, where the user's working directory and env are
        tracking = values["tracking.tracking_uri"] = resolve_uri(c.tracking)
    values["model.init"] = resolve_init(c.model.init, tracking, candidates, model_folders)
    resolved = with_values(cfg, values)
    return adopt_card(resolved) if model_folders else resolved


def adopt_card(cfg: C) -> C:
    """``cfg`` with the ``[model]`` keys of the card of the model folder ``model.init`` (unchanged for
    a weights file or no init); each value that changes is logged, naming the card."""
    c: Any = cfg
    changed = {key: value for key, value in card_architecture(c.model.init).items()
               if getattr(c.model, key.split(".", 1)[1]) != value}
    for key, value in changed.items():
        log.info("%s: %r -> %r (the model card of %s)", key, getattr(c.model, key.split(".", 1)[1]), value, c.model.init)
    return with_values(cfg, changed) if changed else cfg
