"""Build models by name: ``create_model("vit_b", task="pretrain", device="meta")``."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import nn

from pipeline.models.classify import Classifier
from pipeline.models.model_config import ModelConfig, init_weights
from pipeline.models.pretrain import PretrainModel
from pipeline.models.sizes import ArchSpec, get_spec

Task = Literal["pretrain", "classify"]

_COMMON = {"drop_path", "layer_scale_init", "attn_impl"}
_TASK_KWARGS = {"pretrain": _COMMON | {"embed_visible_only", "mean", "std", "normalize_target"},
                "classify": _COMMON | {"num_classes", "head_drop", "init_scale"}}


def build(spec: ArchSpec, task: Task = "pretrain", **kwargs: Any) -> nn.Module:
    """A model of ``spec`` for ``task``; ``kwargs`` are the model's own options."""
    if task not in _TASK_KWARGS:
        raise ValueError(f"unknown task {task!r}; choose pretrain or classify")
    unknown = sorted(set(kwargs) - _TASK_KWARGS[task])
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for task {task}; valid: {', '.join(sorted(_TASK_KWARGS[task]))}")
    return PretrainModel(spec, **kwargs) if task == "pretrain" else Classifier(spec, **kwargs)


def create_model(name: str, task: Task = "pretrain", device: str | torch.device | None = None,
                 grad_checkpointing: bool = False, **overrides: Any) -> nn.Module:
    """Model ``name`` for ``task``. ``overrides`` mix architecture fields (``num_frames``,
    ``img_size``, ``embed_dim`` ...) and model options (``drop_path``, ``attn_impl``,
    ``num_classes`` ...). ``device="meta"`` builds shapes only, without memory.
    """
    spec_fields = set(ArchSpec.__dataclass_fields__)
    spec = get_spec(name, **{k: v for k, v in overrides.items() if k in spec_fields})
    options = {k: v for k, v in overrides.items() if k not in spec_fields}
    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        model = build(spec, task, **options)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def create_model_from_config(cfg: ModelConfig, task: Task = "pretrain", device: str | torch.device | None = None,
                             **options: Any) -> nn.Module:
    """Model from a ``[model]`` section (its :meth:`~ModelConfig.model_options`, then ``options``);
    loads ``cfg.init`` (official or our layout) when it names weights (not '' or ``random``)."""
    model = create_model(cfg.name, task, device=device, **cfg.arch_overrides(), **{**cfg.model_options(), **options})
    if init_weights(cfg.init):
        from pipeline.models.weights import load_file

        load_file(model, cfg.init)
    return model
