"""Configs of the supervised jobs: ``jobs.finetune`` and ``jobs.evaluate`` (one dataclass per TOML table).

The shared sections keep their pre-training defaults (a section present in a TOML file is built
from its class defaults, so per-job defaults in a ``default_factory`` would be lost); the
fine-tuning recipe values (layer decay 0.75, drop path 0.1, betas 0.9/0.999, ...) live in
``jobs/configs/finetune/*.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.core.config import fill_derived, help_field
from pipeline.data.loader import EvalDataConfig, FinetuneDataConfig
from pipeline.infra.engine import DeepSpeedConfig, OptimConfig
from pipeline.models.model_config import ClassifierConfig, FinetuneModelConfig
from pipeline.infra.tracking import TrackingConfig
from pipeline.train.config import RunSection, ScalingSection, TrainSection
from pipeline.train.mixup import MixupConfig


@dataclass
class FinetuneSection:
    """What is trained, how it is validated, and what is kept (TOML section ``[finetune]``)."""

    mode: Literal["full", "linear_probe", "adapter"] = help_field(
        "full", help="full: encoder + head; linear_probe: frozen encoder, train fc_norm + head; "
                     "adapter: frozen encoder, train AdaptFormer adapters (model.adapter_dim) + fc_norm + head")
    val_split: str = help_field("val", help="split validated on during training ('' = none)")
    val_every: int = help_field(0, help="steps between validations; 0 = once per epoch (and always at the end)")
    val_num_clips: int = help_field(1, help="validation: temporal clips per video (full test: jobs.evaluate)")
    val_num_crops: int = help_field(1, help="validation: spatial crops per clip")
    classes_from_data: bool = help_field(True, help="set model.num_classes to the label count of the shard index")
    keep: Literal["best", "last"] = help_field("best", help="weights exported as model.pt and registered")
    registered_alias: str = help_field("champion", help="alias given to the registered version (tracking.registered_model)")

    def __post_init__(self) -> None:
        if self.val_every < 0 or self.val_num_clips < 1 or self.val_num_crops < 1:
            raise ValueError("finetune.val_every >= 0, val_num_clips and val_num_crops >= 1")


@dataclass
class FinetuneTracking(TrackingConfig):
    """Fine-tuning's tracking: + the model registry entry of the kept weights (``[tracking]``)."""

    registered_model: str = help_field("", help="register the kept weights under this model name ('' = no)")


@dataclass
class FinetuneConfig:
    """Fine-tune a video classifier (pre-trained encoder + head) with Ray Train + DeepSpeed ZeRO."""

    run: RunSection = field(default_factory=RunSection)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: FinetuneTracking = field(default_factory=FinetuneTracking)

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's


@dataclass
class EvalSection:
    """What is reported (TOML section ``[eval]``)."""

    topk: tuple[int, ...] = help_field((1, 5), help="top-k accuracies reported")
    view_chunk: int = help_field(0, help="views per forward pass (0 = a whole batch of videos at once)")
    precision: Literal["fp32", "bf16"] = help_field("fp32", help="inference dtype")


@dataclass
class EvaluateConfig:
    """Multi-view evaluation (clips x crops, softmax averaged per video) of a classifier on a shard split.

    ``model.init`` is ``models:/name@alias``, a fine-tuning run folder (its ``export/``), or a weights
    file (then ``model.*`` describes the architecture).
    """

    run: RunSection = field(default_factory=RunSection)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's
