"""Trained classifiers as files and in the MLflow model registry; loading them back for inference.

A *model folder* holds ``model.pt`` (fp32 state dict of a :class:`~pipeline.models.Classifier`)
and ``model.json`` (a :class:`ModelCard`: the ``[model]`` section, class names, the clip shape,
sampling rate and normalisation it was trained with, metrics); a pre-training export has the
same card without classes as ``card.json``. ``jobs.finetune`` writes a model folder under
``<run>/export/`` and registers it: the folder is logged as the run's ``model/`` artifacts and a
registry version points at it (a state dict + card is a simpler, version-proof contract than a
pickled ``mlflow.pytorch`` model). The version is tagged with the validation top-1 it was kept on
and what that was measured on (:class:`ValidationData`); its alias moves to it only when it beats
the holder on the same validation data, or when told to (``finetune.promote``, :func:`promotion`).

    register_model(tracking_cfg, run_id, "motion-vit", "champion", folder, "if_better", validation)
    model, card = load_classifier("models:/motion-vit@champion")   # or a folder, or a run folder

``model.init`` of every job goes through :func:`resolve_init` once, on the driver: local paths,
``s3://`` files and folders, ``runs:/`` and ``models:/`` URIs become one concrete uri (local or
``s3://``) that the workers get in their config (``random`` stays ``random``: no weights); each node then downloads a remote file once
into its cache (:func:`pipeline.core.io.cached_copy`). MLflow is reached through :mod:`pipeline.infra.tracking`.
"""

from __future__ import annotations

import hashlib
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
    alias_holder,
    model_version_source,
    redact_url,
    register_version,
    registered_versions,
    resolve_uri,
    run_artifact_uri,
    set_alias,
)
from pipeline.models import create_model_from_config
from pipeline.models.model_config import ARCHITECTURE_KEYS, ClassifierConfig, init_weights
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


# What a registered version records about itself (model version tags): the validation top-1 its
# weights were kept on, what that score was measured on, and where its training started.
TAG_TOP1, TAG_DATA, TAG_DATA_ABOUT, TAG_INIT = "tubelet.val_top1", "tubelet.val_data", "tubelet.val_data_about", \
    "tubelet.init"
PROMOTE = ("if_better", "always", "never")


@dataclass
class ValidationData:
    """What a validation top-1 was measured on. Two scores compare only when their :attr:`identity`
    is the same: the split, the views cut from each video, and the split's shards themselves (their
    names, sha256 and the label names of the index; their location when the index has no sha256)."""

    shards: str
    split: str
    recipe: dict[str, int]  # num_frames, sampling_rate, input_size, num_clips, num_crops
    content: str = ""  # digest of the split's shards and the labels ('' = unknown: the location stands in)

    @property
    def identity(self) -> str:
        parts = [self.split, sorted(self.recipe.items()), self.content or self.shards]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12]

    def describe(self) -> str:
        r = self.recipe
        return (f"{self.split} of {redact_url(self.shards)}, {r.get('num_frames')} frames every "
                f"{r.get('sampling_rate')} at {r.get('input_size')} px, {r.get('num_clips')}x{r.get('num_crops')} "
                f"views, data {self.identity}")


@dataclass
class Registration:
    """What :func:`register_model` did: the new version, and whether ``alias`` now points at it."""

    name: str
    version: str
    alias: str
    moved: bool
    message: str  # one line, in words

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.moved else f"models:/{self.name}/{self.version}"


def _score(tags: dict[str, str]) -> float | None:
    try:
        return float(tags[TAG_TOP1])
    except (KeyError, ValueError):
        return None


def promotion(alias: str, promote: str, version: str, tags: dict[str, str],
              holder: tuple[str, dict[str, str]] | None) -> tuple[bool, str]:
    """Whether ``alias`` moves to the new ``version`` (whose tags are ``tags``) from ``holder``
    (``(version, tags)`` of the one it points at, None when none), and why, in words.

    ``if_better``: it moves when no version holds it, or when the holder was validated on the same
    data (:class:`ValidationData` identity) and the new top-1 is strictly higher; ``always``: it
    moves; ``never``: it does not."""
    if promote not in PROMOTE:
        raise RegistryError(f"finetune.promote={promote!r}: choose one of {', '.join(PROMOTE)}")
    if not alias:
        return False, "no alias given (finetune.registered_alias is empty)"
    if holder is None:
        if promote == "never":
            return False, f"@{alias} not set (finetune.promote=never)"
        return True, f"@{alias} set on it (no version held it)"
    held, held_tags = holder
    mine, theirs = _score(tags), _score(held_tags)
    held_words = f"version {held}" + (f" (val top-1 {theirs:.3f})" if theirs is not None else "")
    if promote == "always":
        return True, f"@{alias} moved from {held_words} to version {version} (finetune.promote=always)"
    if promote == "never":
        return False, f"@{alias} stays on {held_words} (finetune.promote=never)"
    unchanged = f"@{alias} stays on {held_words} (finetune.promote=always moves it)"
    if mine is None or not tags.get(TAG_DATA):
        return False, f"not compared: this version has no validation score (finetune.val_split); {unchanged}"
    if theirs is None or not held_tags.get(TAG_DATA):
        return False, f"not compared: version {held} has no recorded validation score; {unchanged}"
    if held_tags[TAG_DATA] != tags[TAG_DATA]:
        about = held_tags.get(TAG_DATA_ABOUT) or held_tags[TAG_DATA]
        return False, f"not compared: the holder was validated on other data ({about}); {unchanged}"
    if mine > theirs:
        return True, (f"@{alias} moved from version {held} ({theirs:.3f}) to version {version} ({mine:.3f}), "
                      "same validation data")
    return False, f"@{alias} stays on version {held} (val top-1 {theirs:.3f}, same validation data)"


def register_model(tracking: TrackingConfig | str, run_id: str, name: str, alias: str, folder: str,
                   promote: str = "if_better", validation: ValidationData | None = None) -> Registration:
    """Log ``folder`` as the run's ``model/`` artifacts and register a version of ``name`` from it,
    tagged with its validation top-1 (its card's ``val_top1``), what that was measured on
    (``validation``) and its init; then move ``alias`` to it when :func:`promotion` says so."""
    uri = _tracking_uri(tracking)
    card = json.loads(sio.read_text(sio.join(folder, CARD)))
    top1 = card.get("metrics", {}).get("val_top1") if isinstance(card, dict) else None
    tags = {TAG_INIT: str(card.get("source", {}).get("init", "")) if isinstance(card, dict) else ""}
    if top1 is not None and validation is not None:
        tags.update({TAG_TOP1: f"{float(top1):.6f}", TAG_DATA: validation.identity,
                     TAG_DATA_ABOUT: validation.describe()})
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for file in (WEIGHTS, CARD):
            local = Path(tmp) / file
            local.write_bytes(sio.read_bytes(sio.join(folder, file)))
            files.append(local)
        version = register_version(uri, run_id, name, files, "model", tags)
    try:
        holder = alias_holder(uri, name, alias) if alias else None
        moved, why = promotion(alias, promote, version, tags, holder[:2] if holder else None)
        if moved:
            set_alias(uri, name, alias, version)
    except TrackingError as exc:
        raise RegistryError(f"registered models:/{name}/{version}, but @{alias}: {exc}") from None
    score = f"val top-1 {float(top1):.3f}" if top1 is not None else "no validation score"
    message = f"registered models:/{name}/{version} ({score}); {why}"
    log.info("%s at %s", message, redact_url(uri))
    return Registration(name, version, alias, moved, message)


def registered_uri(tracking: TrackingConfig | str, name: str, alias: str, run_id: str) -> str:
    """How the newest version of ``name`` registered from ``run_id`` is reached now: by ``alias`` when
    the alias points at it, else by number; '' when the run registered none."""
    uri = _tracking_uri(tracking)
    versions = registered_versions(uri, name, run_id)
    if not versions:
        return ""
    holder = alias_holder(uri, name, alias) if alias else None
    if holder and holder[0] in versions:
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{versions[-1]}"


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
    anything unusable raises a one-line error naming ``model.init``. '' and ``random`` (no
    weights: :data:`~pipeline.models.model_config.RANDOM_INIT`) stay as they are.
    """
    if not init_weights(spec):
        return spec
    needs_mlflow = spec.startswith(("models:/", "runs:/"))
    location = _location(spec, _tracking_uri(tracking) if needs_mlflow else "")
    if model_folders:
        folder = _model_folder_at(location)
        if folder:
            return folder
    return _weights_at(spec, location, candidates)


def model_folder(spec: str, tracking: TrackingConfig | str | None = None) -> str | None:
    """Where the model folder of ``spec`` is: a registry or run URI, a model folder, a fine-tuning run
    folder (its ``export/best``, else ``export/last``); None for a plain weights file or no weights."""
    if not init_weights(spec):
        return None
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
    if not init_weights(init):  # no weights ('' or "random"): nothing describes them
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
