"""The ``[model]`` section of a job config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.core.config import help_field


@dataclass
class ModelConfig:
    """Which model to build, at which input size, and how (TOML section ``[model]``)."""

    name: str = help_field("vit_b", help="registered size: vit_tiny, vit_s, vit_b, vit_l, vit_h, vit_g")
    num_frames: int = help_field(16, help="frames per clip")
    img_size: int = help_field(224, help="square crop side in pixels")
    tubelet_size: int = help_field(2, help="frames per tubelet (temporal patch size)")
    drop_path: float = help_field(0.0, help="stochastic depth rate of the last block (linear from 0)")
    layer_scale_init: float = help_field(0.0, help="layer-scale init value; 0 = off")
    attn_impl: Literal["sdpa", "eager"] = help_field("sdpa", help="attention kernel: sdpa (fused) or eager (reference)")
    grad_checkpointing: bool = help_field(False, help="recompute block activations in backward to save memory")
    num_classes: int = help_field(400, help="classifier outputs (fine-tuning only)")
    init: str = help_field("", help="weights to start from (official or ours, .pth/.pt); empty = random init")
    patch_size: int = help_field(0, help="spatial patch side in pixels (0 = the size's own: 16, 14 for vit_g)")
    normalize_target: bool = help_field(True, help="pre-training target: per-patch normalised pixels (official "
                                                   "default) or raw pixels (false; for flat synthetic frames)")
    adapter_dim: int = help_field(0, help="AdaptFormer bottleneck width in every encoder block (0 = none; "
                                            "finetune.mode=adapter trains only these and the head)")

    def arch_overrides(self) -> dict[str, int]:
        """The input-size, patch and adapter fields, as :func:`~pipeline.models.sizes.get_spec` overrides."""
        out = {"num_frames": self.num_frames, "img_size": self.img_size, "tubelet_size": self.tubelet_size,
               "adapter_dim": self.adapter_dim}
        return {**out, "patch_size": self.patch_size} if self.patch_size else out
