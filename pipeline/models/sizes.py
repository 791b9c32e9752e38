"""Model sizes: one frozen :class:`ArchSpec` per registered name.

Encoder sizes follow VideoMAE V2 (arXiv 2303.16727, Table 1 and the official model zoo);
decoder widths and heads follow the official ``pretrain_videomae_*`` constructors (depth 4 as
in the V2 pre-training scripts). ``vit_tiny`` exists only for tests and smoke runs, and
``vit_tiny_big`` (twice its depth, 4/3 its width, ~3.5x its FLOPs) only as a larger teacher for a
``vit_tiny`` student in the distillation benchmark: a real size up (``vit_s``) is ~90x the compute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Encoder parameter counts reported by the paper (millions), checked by the unit tests.
PAPER_ENCODER_PARAMS_M = {"vit_s": 22, "vit_b": 87, "vit_l": 305, "vit_h": 633, "vit_g": 1011}


@dataclass(frozen=True)
class ArchSpec:
    """Everything that fixes the shapes of a model (and therefore its params and FLOPs)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    num_frames: int = 16
    img_size: int = 224
    tubelet_size: int = 2
    in_chans: int = 3
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    adapter_dim: int = 0  # AdaptFormer bottleneck width per encoder block; 0 = no adapters
    adapter_scale: float = 0.1

    def __post_init__(self) -> None:
        for dim, heads, what in ((self.embed_dim, self.num_heads, "encoder"),
                                 (self.decoder_dim, self.decoder_heads, "decoder")):
            if dim % heads:
                raise ValueError(f"{what} width {dim} is not divisible by {heads} heads")
        if self.num_frames % self.tubelet_size or self.img_size % self.patch_size:
            raise ValueError(f"{self.num_frames} frames x {self.img_size}px do not tile into "
                             f"tubelets of {self.tubelet_size} x {self.patch_size}px")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')``."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values per token: ``tubelet * p * p * C`` (the decoder head's width)."""
        return self.tubelet_size * self.patch_size**2 * self.in_chans

    def replace(self, **changes: Any) -> "ArchSpec":
        return dataclasses.replace(self, **changes)


_SIZES: dict[str, ArchSpec] = {
    "vit_tiny": ArchSpec(embed_dim=96, depth=2, num_heads=3, mlp_dim=384, patch_size=16,
                         decoder_dim=64, decoder_depth=2, decoder_heads=2),
    "vit_tiny_big": ArchSpec(embed_dim=128, depth=4, num_heads=4, mlp_dim=512, patch_size=16,
                             decoder_dim=64, decoder_depth=2, decoder_heads=2),
    "vit_s": ArchSpec(embed_dim=384, depth=12, num_heads=6, mlp_dim=1536, patch_size=16,
                      decoder_dim=192, decoder_depth=4, decoder_heads=3),
    "vit_b": ArchSpec(embed_dim=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16,
                      decoder_dim=384, decoder_depth=4, decoder_heads=6),
    "vit_l": ArchSpec(embed_dim=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=16,
                      decoder_dim=512, decoder_depth=4, decoder_heads=8),
    "vit_h": ArchSpec(embed_dim=1280, depth=32, num_heads=16, mlp_dim=5120, patch_size=16,
                      decoder_dim=512, decoder_depth=4, decoder_heads=8),
    # ViT-g: mlp_ratio 48/11 in the official code, i.e. 6144 hidden units; patch 14.
    "vit_g": ArchSpec(embed_dim=1408, depth=40, num_heads=16, mlp_dim=6144, patch_size=14,
                      decoder_dim=512, decoder_depth=4, decoder_heads=8),
}


def list_models() -> list[str]:
    """Registered model names, smallest first."""
    return list(_SIZES)


def get_spec(name: str, **overrides: Any) -> ArchSpec:
    """The spec of ``name`` with field ``overrides`` (e.g. ``num_frames=4, img_size=32``)."""
    if name not in _SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_SIZES)}")
    fields = {f.name for f in dataclasses.fields(ArchSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown architecture field {unknown[0]!r}; valid: {', '.join(sorted(fields))}")
    return _SIZES[name].replace(**overrides)
