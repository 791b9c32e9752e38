"""Trained classifiers as files and in the MLflow model registry; loading them back for inference.

A *model folder* holds ``model.pt`` (fp32 state dict of a :class:`~pipeline.models.Classifier`)
and ``model.json`` (a :class:`ModelCard`: the ``[model]`` section, class names, the clip shape,
sampling rate and normalisation it was trained with, metrics); a pre-training export has the
same card without classes as ``card.json``. ``jobs.finetune`` writes a model folder under
``<run>/export/`` and registers it: the folder is logged as the run's ``model/`` artifacts and a registry version points at it,
with an alias (a state dict + card is a simpler, version-proof contract than a pickled
``mlflow.pytorch`` model).

    register_model(tracking_cfg, run_id, "motion-vit", "champion", folder)
    model, card = load_classifier("models:/motion-vit@champion")   # or a folder, or a run folder

``model.init`` of every job goes through :func:`resolve_init` once, on the driver: local paths,
``s3://`` files and folders, ``runs:/`` and ``models:/`` URIs become one concrete uri (local or
``s3://``) that the workers get in their config; each node then downloads a remote file once
into its cache (:func:`pipeline.core.io.cached_copy`). MLflow is reached through :mod:`pipeline.infra.tracking`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.core import io as sio
from pipeline.core.errors import TubeletError
from pipeline.core.pixels import IMAGENET_MEAN, IMAGENET_STD
from pipeline.infra.tracking import (
    TrackingConfig,
    TrackingError,
    model_version_source,
    redact_url,
    register_version,
    resolve_uri,
    run_artifact_uri,
)
from pipeline.models import create_model_from_config
from pipeline.models.model_config import ARCHITECTURE_KEYS, ClassifierConfig
from pipeline.models.weights import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS, CARD = "model.pt", "model.json"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_RUN_URI = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>.+)$")


class RegistryError(TubeletError):
    """A registered model that cannot be found or loaded; one line."""


@dataclass
class ModelCard:
    """What a classifier needs besides its weights: architecture, classes, input clip, provenance."""

    model: dict[str, Any]
    class_names: list[str]
    data: dict[str, Any] = field(default_factory=dict)  # num_frames, sampling_rate, input_size, test clips/crops
    metrics: dict[str, float] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # run name, MLflow run id, init weights, step

    def model_config(self) -> ClassifierConfig:
        """The classifier's ``[model]`` section (keys of the training-only options left out)."""
        known = set(ClassifierConfig.__dataclass_fields__)
        return ClassifierConfig(**{**{k: v for k, v in self.model.items() if k in known}, "init": ""})


def write_model_folder(state: dict[str, torch.Tensor], card: ModelCard, folder: str) -> None:
    """``folder/model.pt`` + ``folder/model.json`` (local or s3://)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, Path(tmp) / WEIGHTS)
        sio.upload_file(Path(tmp) / WEIGHTS, sio.join(folder, WEIGHTS))
    write_card(card, folder)


def read_card(folder: str) -> ModelCard:
    try:
        return ModelCard(**json.loads(sio.read_text(sio.join(folder, CARD))))
    except FileNotFoundError:
        raise RegistryError(f"no {CARD} in {folder}: not a model folder written by jobs.finetune") from None


def _tracking_uri(tracking: TrackingConfig | str | None) -> str:
    return tracking if isinstance(tracking, str) and tracking else resolve_uri(
        tracking if isinstance(tracking, TrackingConfig) else TrackingConfig())


def register_model(tracking: TrackingConfig | str, run_id: str, name: str, alias: str, folder: str) -> str:
    """Log ``folder`` as the run's ``model/`` artifacts, register a version of ``name`` from it and
    point ``alias`` at it; returns the version number."""
    uri = _tracking_uri(tracking)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for file in (WEIGHTS, CARD):
            local = Path(tmp) / file
            local.write_bytes(sio.read_bytes(sio.join(folder, file)))
            files.append(local)
        version = register_version(uri, run_id, name, alias, files, "model")
    log.info("registered %s version %s%s at %s", name, version, f" @{alias}" if alias else "", redact_url(uri))
    return version


# What a pre-training run folder, an export folder or a model folder holds, in order of preference.
WEIGHT_FILES = ("pretrain_fp32.pt", "export/pretrain_fp32.pt", WEIGHTS)
# Fine-tuning also starts from a fine-tuning run's kept weights, after the pre-training exports.
FINETUNE_INIT_FILES = (*WEIGHT_FILES, "export/best/model.pt", "export/last/model.pt")


def _location(spec: str, tracking_uri: str) -> str:
    """Where the files ``spec`` names are stored: an absolute local path or an ``s3://`` uri.
    ``models:/`` and ``runs:/`` are looked up in MLflow (the registry or the run's artifacts)."""
    where = spec
    try:
        if spec.startswith("models:/"):
            match = _URI.match(spec)
            if not match:
                raise RegistryError(f"model.init {spec}: not models:/<name>@<alias> or models:/<name>/<version>")
            where = model_version_source(tracking_uri, match.group("name"), match.group("alias") or "",
                                         match.group("version") or "")
        if where.startswith("runs:/"):  # given, or the source a model version was registered from
            match = _RUN_URI.match(where)
            if not match:
                raise RegistryError(f"model.init {spec}: not runs:/<run_id>/<path>")
            where = sio.join(run_artifact_uri(tracking_uri, match.group("run")), match.group("path"))
    except TrackingError as exc:
        raise RegistryError(f"model.init {spec}: {exc}") from None
    if where.startswith("file://"):
        where = where[len("file://"):]
    if sio.is_remote(where) and not where.startswith("s3://"):
        raise RegistryError(f"model.init {spec}: its files are at {redact_url(where)}, which the nodes cannot "
                            "read (local paths and s3:// only): copy them to s3:// and point model.init there")
    return where if sio.is_remote(where) else os.path.abspath(where)


def _model_folder_at(location: str) -> str | None:
    for candidate in (location, sio.join(location, "export", "best"), sio.join(location, "export", "last")):
        if sio.exists(sio.join(candidate, CARD)):
            return candidate
    return None


def _weights_at(spec: str, location: str, candidates: tuple[str, ...]) -> str:
    if sio.is_file(location):
        return location
    if sio.is_dir(location):
        for name in candidates:
            if sio.is_file(sio.join(location, name)):
                return sio.join(location, name)
        raise CheckpointError(f"model.init {spec}: a folder without weights (looked for {', '.join(candidates)})")
    raise CheckpointError(f"model.init {spec}: no such file or folder")


def resolve_init(spec: str, tracking: TrackingConfig | str | None = None, candidates: tuple[str, ...] = WEIGHT_FILES,
                 model_folders: bool = False) -> str:
    """``model.init`` as one concrete uri the workers can read: an absolute local path or ``s3://``.

    ``spec``: a weights file, a pre-training / fine-tuning run folder, an export or model folder
    (local or ``s3://``), ``runs:/<run_id>/<path>``, ``models:/<name>@<alias>`` or
    ``models:/<name>/<version>``. Gives the weights file (the first of ``candidates`` in a
    folder), or, with ``model_folders``, the model folder when there is one (the folder itself,
    else its ``export/best`` or ``export/last``). Called once, on the driver, before any compute;
    anything unusable raises a one-line error naming ``model.init``. '' stays ''.
    """
    if not spec:
        return ""
    needs_mlflow = spec.startswith(("models:/", "runs:/"))
    location = _location(spec, _tracking_uri(tracking) if needs_mlflow else "")
    if model_folders:
        folder = _model_folder_at(location)
        if folder:
            return folder
    return _weights_at(spec, location, candidates)


def model_folder(spec: str, tracking: TrackingConfig | str | None = None) -> str | None:
    """Where the model folder of ``spec`` is: a registry or run URI, a model folder, a fine-tuning run
    folder (its ``export/best``, else ``export/last``); None for a plain weights file."""
    needs_mlflow = spec.startswith(("models:/", "runs:/"))
    return _model_folder_at(_location(spec, _tracking_uri(tracking) if needs_mlflow else ""))


def weights_file(spec: str, candidates: tuple[str, ...] = WEIGHT_FILES) -> str:
    """The weights file ``spec`` names (local or ``s3://``): the file itself, or the first of
    ``candidates`` in the folder ``spec``. Raises CheckpointError (one line) for anything else."""
    return resolve_init(spec, None, candidates)


# The pre-training export's card (``export/card.json``, beside ``pretrain_fp32.pt``): a ModelCard
# without classes. Not ``model.json``: an export folder is no classifier's model folder.
EXPORT_CARD = "card.json"
# What a card's ``data`` records of the recipe the weights were trained with, as config keys.
RECIPE_DATA_KEYS = ("sampling_rate",)


def recipe_data(data_cfg: Any) -> dict[str, Any]:
    """The ``data`` of a card: the clip (frames at a sampling rate, the input side) and the
    normalisation the weights were trained with (the ImageNet mean/std every job here applies)."""
    return {"num_frames": data_cfg.num_frames, "sampling_rate": data_cfg.sampling_rate,
            "input_size": data_cfg.input_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def write_card(card: ModelCard, folder: str, name: str = CARD) -> None:
    sio.write_text(sio.join(folder, name), json.dumps(asdict(card), indent=1))


def find_card(init: str) -> tuple[ModelCard, str] | None:
    """The card that describes the resolved ``model.init`` and where it is: a model folder's
    ``model.json``, or the card beside a weights file (``model.json`` of the model folder it is in,
    ``card.json`` of a pre-training export); None for weights without one (an official file)."""
    if not init:
        return None
    folder = init if sio.exists(sio.join(init, CARD)) else init.rsplit("/", 1)[0]  # a folder, or the file's
    for name in (CARD, EXPORT_CARD):
        where = sio.join(folder, name)
        if sio.exists(where):
            try:
                return ModelCard(**json.loads(sio.read_text(where))), where
            except (ValueError, TypeError) as exc:
                raise RegistryError(f"model.init {init}: its card {where} is unreadable ({type(exc).__name__}: "
                                    f"{exc}): fix or remove it") from None
    return None


def card_recipe(init: str) -> tuple[dict[str, Any], str]:
    """The architecture and data recipe (``model.<key>``, ``data.sampling_rate``: value) the card of the
    resolved ``model.init`` records, and where that card is; ``({}, "")`` without a card."""
    found = find_card(init)
    if found is None:
        return {}, ""
    card, where = found
    recipe = {f"model.{k}": card.model[k] for k in (*ARCHITECTURE_KEYS, "num_classes") if k in card.model}
    recipe.update({f"data.{k}": card.data[k] for k in RECIPE_DATA_KEYS if k in card.data})
    return recipe, where


def load_classifier(spec: str, model_cfg: ClassifierConfig | None = None,
                    tracking: TrackingConfig | str | None = None) -> tuple[nn.Module, ModelCard]:
    """A classifier in eval mode and its card, from a registry or run URI, a model / run folder, or a
    weights file (then ``model_cfg`` gives the architecture and the card has no class names).
    Remote weights are read through the node's cache (:func:`pipeline.core.io.cached_copy`)."""
    resolved = resolve_init(spec, tracking, model_folders=True)
    if not sio.exists(sio.join(resolved, CARD)):
        if model_cfg is None:
            raise RegistryError(f"{spec}: a weights file needs the [model] section to know the architecture")
        cfg = replace(model_cfg, init=spec)
        model = create_model_from_config(replace(cfg, init=sio.cached_copy(resolved)), "classify")
        return model.eval(), ModelCard(model=asdict(cfg), class_names=[], source={"init": spec})
    card = read_card(resolved)
    model = create_model_from_config(card.model_config(), "classify")
    state = torch.load(sio.cached_copy(sio.join(resolved, WEIGHTS)), map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{spec}: weights do not match {card.model.get('name')}: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval(), card
