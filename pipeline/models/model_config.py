"""The ``[model]`` section of a job config: one class per kind of job, each with exactly its keys.

- :class:`ModelConfig`: the architecture and its weights, what every job that builds a model reads;
- :class:`PretrainModelConfig`: + the pre-training options (drop path, gradient checkpointing,
  the normalised-pixel target);
- :class:`ClassifierConfig`: + the head and adapters of a classifier that is loaded and run
  (evaluation, extraction, prediction);
- :class:`FinetuneModelConfig`: a classifier + the training options.

:meth:`ModelConfig.model_options` turns a section into the model's own keyword arguments, so
:func:`~pipeline.models.factory.create_model_from_config` never guesses which keys exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.core.config import ConfigError, help_field
from pipeline.models.sizes import list_models

# ``model.init = "random"``: start from a random init (seeded with ``run.seed``), said by name. Fine-tuning
# refuses an empty ``model.init`` (a forgotten init would train a weak model without a word);
# pre-training and extraction take empty for the same thing.
RANDOM_INIT = "random"

# The [model] keys that fix a classifier's weights layout and input clip: a model card carries them.
ARCHITECTURE_KEYS = ("name", "num_frames", "img_size", "tubelet_size", "patch_size", "layer_scale_init", "adapter_dim")


def init_weights(spec: str) -> str:
    """The weights ``model.init`` names: '' for none (empty or ``random``), else ``spec`` itself."""
    return "" if spec in ("", RANDOM_INIT) else spec


@dataclass
class ModelConfig:
    """Which model to build, at which input size, from which weights (TOML section ``[model]``)."""

    name: str = help_field("vit_b", help=f"registered size: {', '.join(list_models())}")
    num_frames: int = help_field(16, help="frames per clip (the loader cuts clips of this length)")
    img_size: int = help_field(224, help="square crop side in pixels (the loader crops to it)")
    tubelet_size: int = help_field(2, help="frames per tubelet (temporal patch size)")
    patch_size: int = help_field(0, help="spatial patch side in pixels (0 = the size's own: 16, 14 for vit_g)")
    layer_scale_init: float = help_field(0.0, help="layer-scale init value; 0 = off (> 0 adds per-block scales to the weights)")
    attn_impl: Literal["sdpa", "eager"] = help_field("sdpa", help="attention kernel: sdpa (fused) or eager (reference)")
    init: str = help_field("", help="weights to start from (official or ours, .pth/.pt, a run or model folder, "
                                    "runs:/, models:/); 'random' = random init (fine-tuning needs it named; "
                                    "empty means the same in pre-training)")

    def __post_init__(self) -> None:
        if self.name not in list_models():  # refused when the config is read, not by a worker minutes later
            raise ConfigError(f"model.name={self.name!r} is not a known model: set model.name to one of "
                              f"{', '.join(list_models())}")

    def arch_overrides(self) -> dict[str, int]:
        """The input-size and patch fields, as :func:`~pipeline.models.sizes.get_spec` overrides."""
        out = {"num_frames": self.num_frames, "img_size": self.img_size, "tubelet_size": self.tubelet_size}
        return {**out, "patch_size": self.patch_size} if self.patch_size else out

    def model_options(self) -> dict[str, Any]:
        """Keyword arguments of the model itself (and ``grad_checkpointing``) this section sets."""
        return {"attn_impl": self.attn_impl, "layer_scale_init": self.layer_scale_init}


@dataclass
class PretrainModelConfig(ModelConfig):
    """The model pre-trained by ``jobs.pretrain`` (TOML section ``[model]``)."""

    drop_path: float = help_field(0.0, help="stochastic depth rate of the last block (linear from 0)")
    grad_checkpointing: bool = help_field(False, help="recompute block activations in backward to save memory")
    normalize_target: bool = help_field(True, help="pre-training target: per-patch normalised pixels (official "
                                                   "default) or raw pixels (false; for flat synthetic frames)")

    def model_options(self) -> dict[str, Any]:
        return {**super().model_options(), "drop_path": self.drop_path,
                "grad_checkpointing": self.grad_checkpointing, "normalize_target": self.normalize_target}


@dataclass
class ClassifierConfig(ModelConfig):
    """A video classifier that is loaded and run: evaluation, extraction (TOML section ``[model]``)."""

    num_classes: int = help_field(400, help="classifier outputs")
    adapter_dim: int = help_field(0, help="AdaptFormer bottleneck width in every encoder block (0 = none; "
                                            "finetune.mode=adapter trains only these and the head)")

    def arch_overrides(self) -> dict[str, int]:
        return {**super().arch_overrides(), "adapter_dim": self.adapter_dim}

    def model_options(self) -> dict[str, Any]:
        return {**super().model_options(), "num_classes": self.num_classes}


@dataclass
class FinetuneModelConfig(ClassifierConfig):
    """The classifier trained by ``jobs.finetune`` (TOML section ``[model]``)."""

    drop_path: float = help_field(0.0, help="stochastic depth rate of the last block (linear from 0)")
    grad_checkpointing: bool = help_field(False, help="recompute block activations in backward to save memory")
    init_head: Literal["auto", "keep", "drop"] = help_field(
        "auto", help="the classifier head of a model.init that has one: auto = drop it when the init's card lists "
                     "other classes than the data's (a post-pre-trained or other-dataset classifier), else keep it; "
                     "keep; drop (the head starts fresh; fc_norm is kept)")

    def model_options(self) -> dict[str, Any]:
        return {**super().model_options(), "drop_path": self.drop_path,
                "grad_checkpointing": self.grad_checkpointing}
