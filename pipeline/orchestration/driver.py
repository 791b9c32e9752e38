"""What a training-family launcher (``jobs.pretrain``, ``finetune``, ``evaluate``, ``extract``) resolves
and checks on its driver, once, before Ray starts: a new config, the given one left as it was.

Ray Train workers run in their own working directory and environment, so what depends on the
user's (relative paths, the tracking URI from ``MLFLOW_TRACKING_URI``, ``model.init`` names
such as ``models:/name@alias`` or a run folder) is made concrete here (:func:`resolve_on_driver`).
The weights bring their recipe: the card beside them (a model folder's ``model.json``, a
pre-training export's ``card.json``) gives the architecture and the sampling rate the job
defaults to (:func:`adopt_card`). What the config and the shard index alone show is wrong (a
split that is missing or empty, fewer clips than one global batch, a model that does not tile its
clip) stops the job here in one line (:func:`check_on_driver`), not on every rank after Ray started.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core import io as sio
from pipeline.core.config import ConfigError, given_keys, with_values
from pipeline.core.errors import DataError
from pipeline.data.loader import require_global_batch
from pipeline.data.shard_index import ShardIndex
from pipeline.infra.tracking import resolve_uri
from pipeline.models.sizes import get_spec
from pipeline.train.model_registry import CARD, WEIGHT_FILES, card_recipe, resolve_init

log = logging.getLogger(__name__)

C = TypeVar("C")

# Keys whose value the weights fix: they load into no other.
LAYOUT_KEYS = ("model.name", "model.tubelet_size", "model.patch_size", "model.layer_scale_init")
# Weights the job builds its own model around (pre-training exports, weights files with a card):
# the clip may differ (fixed sin-cos positions are recomputed), the head and adapters are the job's.
HEAD_KEYS = ("model.adapter_dim", "model.num_classes")


def resolve_on_driver(cfg: C, candidates: tuple[str, ...] = WEIGHT_FILES, model_folders: bool = False) -> C:
    """A copy of ``cfg`` with absolute local ``data.shards`` and ``run.output``, the resolved
    ``tracking.tracking_uri`` (when ``tracking.enabled``) and ``model.init`` resolved once by
    :func:`~pipeline.train.model_registry.resolve_init` (``candidates``, ``model_folders``): the
    workers get one concrete local or ``s3://`` file or model folder (each node caches its copy).

    Weights with a card bring their recipe (:func:`adopt_card`): a model folder (jobs that load a
    classifier, ``model_folders``) its whole ``[model]``, a pre-training export its architecture
    and sampling rate, so the loader cuts the clip the model was trained on."""
    c: Any = cfg
    values: dict[str, Any] = {}
    for key, value in (("data.shards", c.data.shards), ("run.output", c.run.output)):
        if value and not sio.is_remote(value):
            values[key] = os.path.abspath(value)
    for key in ("sources", "exclude_shards"):  # shard sets: data.sources, data.exclude_shards (supervised)
        sets = tuple(getattr(c.data, key, ()))
        if any(not sio.is_remote(src) for src in sets):
            values[f"data.{key}"] = [src if sio.is_remote(src) else os.path.abspath(src) for src in sets]
    tracking: Any = c.tracking
    if c.tracking.enabled:  # decided here, where the user's working directory and env are
        tracking = values["tracking.tracking_uri"] = resolve_uri(c.tracking)
    values["model.init"] = resolve_init(c.model.init, tracking, candidates, model_folders)
    return adopt_card(with_values(cfg, values))


def _get(cfg: Any, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name, _MISSING)


_MISSING = object()


def _effective(key: str, value: Any, name: Any) -> Any:
    """``model.patch_size=0`` means the size's own patch: compare the patch the model gets."""
    if key == "model.patch_size" and value == 0 and isinstance(name, str):
        try:
            return get_spec(name).patch_size
        except ValueError:
            return value
    return value


def adopt_card(cfg: C) -> C:
    """``cfg`` with the recipe of the card of its resolved ``model.init`` (unchanged without one).

    A key the user did not give (not in the config file, ``--set`` or the pipeline's values:
    :func:`~pipeline.core.config.given_keys`) takes the card's value (logged). A key the user gave
    with another value is kept, with one line saying it differs from the card, except where the
    weights decide: a model folder's classifier is built from its card (its ``[model]`` keys are
    the card's, said in one line); weights the job builds its own model around load into no other
    :data:`LAYOUT_KEYS` (a ConfigError names the key)."""
    c: Any = cfg
    recipe, where = card_recipe(c.model.init)
    if not recipe:
        return cfg
    folder = where == sio.join(c.model.init, CARD)
    given = given_keys(cfg)
    changes: dict[str, Any] = {}
    for key, card_value in recipe.items():
        current = _get(c, key)
        if current is _MISSING or (not folder and key in HEAD_KEYS):
            continue
        if _effective(key, current, c.model.name) == _effective(key, card_value, recipe.get("model.name")):
            continue
        if key not in given:
            log.info("%s: %r -> %r (the model card of %s)", key, current, card_value, c.model.init)
            changes[key] = card_value
        elif folder and key.startswith("model."):
            log.warning("%s=%r differs from the model card's %r (%s): using %r (a model folder's classifier is "
                        "built from its card)", key, current, card_value, where, card_value)
            changes[key] = card_value
        elif key in LAYOUT_KEYS:
            raise ConfigError(f"{key}={current!r} differs from the model card's {card_value!r} ({where}): the weights "
                              f"fix it; remove {key} from the config to use the card's, or start from other weights")
        else:
            log.warning("%s=%r differs from the model card's %r (%s): using %r", key, current, card_value, where, current)
    return with_values(cfg, changes) if changes else cfg


def check_on_driver(cfg: Any, *, train: bool = False, val_split: str = "", task: str = "") -> ShardIndex:
    """What the resolved config and the shard index show is wrong, before Ray starts (one line each):
    the model does not tile its clip; with ``task`` (the model the job builds: ``pretrain`` or
    ``classify``), ``model.init``'s weights do not fit it (:func:`check_init`); ``data.split``
    (and ``val_split``) missing or empty; with ``train``, fewer clips than one global batch
    (``data.batch_size`` x ``scaling.num_workers``, the condition every rank's loader would stop
    on). Returns the index."""
    try:
        get_spec(cfg.model.name, **cfg.model.arch_overrides())
    except ValueError as exc:
        raise ConfigError(f"[model] {exc}: change model.num_frames, model.img_size, model.tubelet_size "
                          "or model.patch_size") from None
    sources = tuple(getattr(cfg.data, "sources", ()))
    if sources:
        return _check_sources(cfg, sources, train=train, task=task)
    index = ShardIndex.load(cfg.data.shards)
    samples = index.num_samples(cfg.data.split, key="data.split")
    if val_split:
        index.split(val_split, key="finetune.val_split")
    if train:
        require_global_batch(cfg.data, samples, cfg.scaling.num_workers, index.uri)
    if task:
        check_init(cfg.model, task)
    return index


def _check_sources(cfg: Any, sources: tuple[str, ...], *, train: bool, task: str) -> ShardIndex:
    """:func:`check_on_driver` for pre-training on ``data.sources``: every source's ``index.json``
    readable and its ``data.split`` non-empty (one line naming ``data.sources`` and the source),
    and, with ``train``, one global batch in their samples together. Returns the first index."""
    indexes, samples = [], 0
    for i, src in enumerate(sources):
        try:
            index = ShardIndex.load(src)
            samples += index.num_samples(cfg.data.split, key="data.split")
        except DataError as exc:
            raise DataError(f"data.sources[{i}]={src!r}: {exc}") from None
        indexes.append(index)
    if train:
        require_global_batch(cfg.data, samples, cfg.scaling.num_workers, f"data.sources ({len(sources)} sources)")
    if task:
        check_init(cfg.model, task)
    return indexes[0]


def check_init(model_cfg: Any, task: str) -> None:
    """``model.init``'s weights against the ``task`` model of ``model_cfg``, shapes only (the model
    on the meta device, the file memory-mapped): an architecture they do not fit (depth, width,
    patch or tubelet size) is one line naming ``model.init`` and ``model.name``, before Ray
    starts, not a failure on every rank after it. A card's recipe was adopted before
    (:func:`adopt_card`); a remote file is checked where it is loaded, by the workers."""
    from pipeline.models import create_model_from_config
    from pipeline.models.model_config import init_weights
    from pipeline.models.weights import CheckpointError, check_state, read_weights

    path = init_weights(model_cfg.init)
    if not path or sio.is_remote(path) or not os.path.isfile(path):
        return
    try:
        state = read_weights(Path(path), mmap=True)
    except CheckpointError as exc:
        raise ConfigError(f"model.init: {exc}") from None
    model = create_model_from_config(replace(model_cfg, init=""), task, device="meta")  # type: ignore[arg-type]
    try:
        check_state(model, state)
    except CheckpointError as exc:
        raise ConfigError(f"model.init={path} does not fit model.name={model_cfg.name!r} ({task}): {exc}") from None
