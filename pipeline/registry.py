"""Trained classifiers as files and in the MLflow model registry; loading them back for inference.

A *model folder* holds ``model.pt`` (fp32 state dict of a :class:`~pipeline.models.Classifier`)
and ``model.json`` (a :class:`ModelCard`: the ``[model]`` section, class names, the clip shape
it was trained on, metrics). ``jobs.finetune`` writes one under ``<run>/export/`` and registers
it: the folder is logged as the run's ``model/`` artifacts and a registry version points at it,
with an alias (STACK.md: a state dict + config is a simpler contract than ``mlflow.pytorch``).

    register_model(tracking_cfg, run_id, "motion-vit", "champion", folder)
    model, card = load_classifier("models:/motion-vit@champion")   # or a folder, or a run folder

Besides :mod:`pipeline.tracking`, this is the only module that imports mlflow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import io as sio
from pipeline.errors import TubeletError
from pipeline.models import create_model_from_config
from pipeline.models.checkpoints import CheckpointError
from pipeline.models.config import ModelConfig
from pipeline.tracking import TrackingConfig, redact_url, resolve_uri

log = logging.getLogger(__name__)

WEIGHTS, CARD = "model.pt", "model.json"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


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

    def model_config(self) -> ModelConfig:
        known = set(ModelConfig.__dataclass_fields__)
        return ModelConfig(**{**{k: v for k, v in self.model.items() if k in known}, "init": ""})


def write_model_folder(state: dict[str, torch.Tensor], card: ModelCard, folder: str) -> None:
    """``folder/model.pt`` + ``folder/model.json`` (local or s3://)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, Path(tmp) / WEIGHTS)
        sio.upload_file(Path(tmp) / WEIGHTS, sio.join(folder, WEIGHTS))
    sio.write_text(sio.join(folder, CARD), json.dumps(asdict(card), indent=1))


def read_card(folder: str) -> ModelCard:
    try:
        return ModelCard(**json.loads(sio.read_text(sio.join(folder, CARD))))
    except FileNotFoundError:
        raise RegistryError(f"no {CARD} in {folder}: not a model folder written by jobs.finetune") from None


def _client(tracking: TrackingConfig | str | None) -> Any:
    from mlflow import MlflowClient

    uri = tracking if isinstance(tracking, str) else resolve_uri(tracking or TrackingConfig())
    return MlflowClient(uri, registry_uri=uri), uri


def register_model(tracking: TrackingConfig | str, run_id: str, name: str, alias: str, folder: str) -> str:
    """Log ``folder`` as the run's ``model/`` artifacts, register a version of ``name`` from it and
    point ``alias`` at it; returns the version number."""
    client, uri = _client(tracking)
    with tempfile.TemporaryDirectory() as tmp:
        for file in (WEIGHTS, CARD):
            local = Path(tmp) / file
            local.write_bytes(sio.read_bytes(sio.join(folder, file)))
            client.log_artifact(run_id, str(local), "model")
    try:
        client.get_registered_model(name)
    except Exception:  # absent: the first version creates it
        client.create_registered_model(name, description="Tubelet video classifier (state dict + model.json)")
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/model"
    version = client.create_model_version(name, source, run_id=run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    log.info("registered %s version %s%s at %s", name, version.version, f" @{alias}" if alias else "", redact_url(uri))
    return str(version.version)


def resolve_model_uri(uri: str, tracking: TrackingConfig | str | None = None) -> str:
    """``models:/name@alias`` or ``models:/name/3`` -> a local folder with the downloaded files."""
    match = _URI.match(uri)
    if not match:
        raise RegistryError(f"{uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    client, tracking_uri = _client(tracking)
    name, alias, number = match.group("name"), match.group("alias"), match.group("version")
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    except Exception as exc:  # mlflow raises its RestException with a multi-line message
        raise RegistryError(f"{uri} not found in the registry at {redact_url(tracking_uri)}: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    import mlflow.artifacts

    target = tempfile.mkdtemp(prefix="tubelet-model-")
    return mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=target,
                                               tracking_uri=tracking_uri)


def model_folder(spec: str, tracking: TrackingConfig | str | None = None) -> str | None:
    """Where the model folder of ``spec`` is: a registry URI, a model folder, a fine-tuning run
    folder (its ``export/best``, else ``export/last``); None for a plain weights file."""
    if spec.startswith("models:/"):
        return resolve_model_uri(spec, tracking)
    for candidate in (spec, sio.join(spec, "export", "best"), sio.join(spec, "export", "last")):
        if sio.exists(sio.join(candidate, CARD)):
            return candidate
    return None


# What a pre-training run folder, an export folder or a model folder holds, in order of preference.
WEIGHT_FILES = ("pretrain_fp32.pt", "export/pretrain_fp32.pt", WEIGHTS)


def weights_file(spec: str, candidates: tuple[str, ...] = WEIGHT_FILES) -> str:
    """The local weights file ``spec`` names: the file itself, or the first of ``candidates`` in the
    folder ``spec``, as an absolute path. Raises CheckpointError (one line) for anything else."""
    if sio.is_remote(spec):
        raise CheckpointError(f"model.init {spec}: neither a model folder nor a local weights file "
                              "(download remote weights first)")
    if os.path.isfile(spec):
        return os.path.abspath(spec)
    if os.path.isdir(spec):
        for name in candidates:
            if os.path.isfile(os.path.join(spec, name)):
                return os.path.abspath(os.path.join(spec, name))
        raise CheckpointError(f"model.init {spec}: a folder without weights (looked for {', '.join(candidates)})")
    raise CheckpointError(f"model.init {spec}: no such file or folder")


def load_classifier(spec: str, model_cfg: ModelConfig | None = None,
                    tracking: TrackingConfig | str | None = None) -> tuple[nn.Module, ModelCard]:
    """A classifier in eval mode and its card, from a registry URI, a model / run folder, or a
    weights file (then ``model_cfg`` gives the architecture and the card has no class names)."""
    folder = model_folder(spec, tracking)
    if folder is None:
        if model_cfg is None:
            raise RegistryError(f"{spec}: a weights file needs the [model] section to know the architecture")
        cfg = ModelConfig(**{**asdict(model_cfg), "init": spec})
        model = create_model_from_config(cfg, "classify")
        return model.eval(), ModelCard(model=asdict(cfg), class_names=[], source={"init": spec})
    card = read_card(folder)
    model = create_model_from_config(card.model_config(), "classify")
    state = torch.load(_local(sio.join(folder, WEIGHTS)), map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{spec}: weights do not match {card.model.get('name')}: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval(), card


def _local(uri: str) -> str:
    if not sio.is_remote(uri):
        return uri
    local = Path(tempfile.mkdtemp(prefix="tubelet-weights-")) / Path(uri).name
    local.write_bytes(sio.read_bytes(uri))
    return str(local)
