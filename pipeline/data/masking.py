"""Token masks for VideoMAE pre-training, built on CPU per sample in the data pipeline (``pipeline.data.streams``).

Every mask is a bool tensor ``[B, N]`` over the token grid ``(T', H', W')`` in t-major order
(token index ``t * H'W' + h * W' + w``). ``True`` means *masked* for the encoder (the encoder
does not see the token) and *dropped* for the decoder (no mask token is reconstructed there).
Every row of a batch masks the same number of tokens, so the model gathers without padding.

- :func:`tube_mask` (encoder, VideoMAE): one random spatial mask of ``int(ratio * H'W')``
  positions per sample, repeated over every temporal slot.
- :func:`running_cell_mask` (decoder, VideoMAE V2): a 2x2 cell with ``int(4 * ratio)`` dropped
  marks, shifted by one position per temporal slot and tiled over the grid. Identical to the
  official ``RunningCellMaskingGenerator``: only 4 distinct maps exist, each sample draws one.
- :func:`random_mask`: ``int(ratio * N)`` tokens anywhere (the image-MAE mask).
- :func:`decoder_mask`: running cell for ``ratio > 0``; ``~enc_mask`` for ``ratio == 0``
  (VideoMAE V1: the decoder reconstructs exactly the encoder-masked tokens).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from pipeline.core.config import help_field

Grid = tuple[int, int, int]

# The 2x2 cell queue of the official generator: dropped marks first, then kept ones. Frame t of
# the map drawn with offset k reads the queue rotated by (k + t + 1): the official generator
# advances its pointer once before reading the first frame.
_CELL = 4


def _check_grid(grid: Sequence[int]) -> Grid:
    if len(grid) != 3 or any(int(g) <= 0 for g in grid):
        raise ValueError(f"grid must be (T', H', W') of positive token counts, got {tuple(grid)}")
    return int(grid[0]), int(grid[1]), int(grid[2])


def _check_ratio(ratio: float) -> float:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return float(ratio)


def _random_rows(batch: int, length: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``[batch, length]`` bool with exactly ``count`` True per row, uniformly placed."""
    noise = torch.rand(batch, length, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


def tube_mask(batch: int, grid: Sequence[int], ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tube masking: ``[B, T'H'W']`` bool, the same ``int(ratio * H'W')`` positions masked per slot."""
    t, h, w = _check_grid(grid)
    ratio = _check_ratio(ratio)
    spatial = _random_rows(batch, h * w, int(ratio * h * w), generator)  # [B, H'W']
    return spatial.unsqueeze(1).expand(batch, t, h * w).reshape(batch, t * h * w).clone()


def random_mask(batch: int, grid: Sequence[int], ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random masking: ``[B, N]`` bool with ``int(ratio * N)`` masked tokens anywhere."""
    t, h, w = _check_grid(grid)
    ratio = _check_ratio(ratio)
    n = t * h * w
    return _random_rows(batch, n, int(ratio * n), generator)


def running_cell_maps(grid: Sequence[int], ratio: float) -> torch.Tensor:
    """The 4 distinct running-cell maps: ``[4, T'H'W']`` bool, True = dropped from the decoder."""
    return _running_cell_maps(_check_grid(grid), _check_ratio(ratio)).clone()  # the caller may write into it


@functools.lru_cache(maxsize=16)
def _running_cell_maps(grid: Grid, ratio: float) -> torch.Tensor:
    # Built once per (grid, ratio): the Python loops took ~1 ms, i.e. ~0.1 ms per clip of an 8-clip batch.
    t, h, w = grid
    dropped = int(_CELL * ratio)
    if not 0 < dropped < _CELL:
        raise ValueError(f"running cell needs 0 < int(4 * ratio) < 4, got ratio {ratio} (use 0 for V1)")
    if h % 2 or w % 2:
        raise ValueError(f"running cell tiles a 2x2 cell: H' and W' must be even, got grid {(t, h, w)}")
    queue = torch.arange(_CELL) < dropped  # [4], dropped marks first
    maps = []
    for offset in range(_CELL):
        frames = []
        for slot in range(t):
            ptr = offset + slot + 1
            cell = queue[(torch.arange(_CELL) + ptr) % _CELL].reshape(2, 2)
            frames.append(cell.repeat(h // 2, w // 2).reshape(-1))  # [H'W']
        maps.append(torch.cat(frames))
    return torch.stack(maps)


def running_cell_mask(batch: int, grid: Sequence[int], ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Running-cell decoder mask: ``[B, T'H'W']`` bool, each sample one of the 4 maps."""
    maps = _running_cell_maps(_check_grid(grid), _check_ratio(ratio))
    choice = torch.randint(_CELL, (batch,), generator=generator)
    return maps[choice]  # advanced indexing: a new tensor, the cached maps stay untouched


def decoder_mask(enc_mask: torch.Tensor, grid: Sequence[int], ratio: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Decoder mask ``[B, N]``: running cell for ``ratio > 0``, ``~enc_mask`` (V1) for ``ratio == 0``."""
    if _check_ratio(ratio) == 0.0:
        return ~enc_mask
    return running_cell_mask(enc_mask.shape[0], grid, ratio, generator)


@dataclass
class MaskConfig:
    """Token masks for pre-training (TOML section ``[mask]``)."""

    encoder_ratio: float = help_field(0.9, help="fraction of tokens hidden from the encoder")
    encoder_kind: Literal["tube", "random"] = help_field("tube", help="encoder mask: tube (VideoMAE) or random")
    decoder_ratio: float = help_field(0.5, help="running-cell fraction dropped from the decoder; 0 = V1 (reconstruct all masked)")

    def __post_init__(self) -> None:
        _check_ratio(self.encoder_ratio)
        _check_ratio(self.decoder_ratio)
        if self.decoder_ratio and not 0 < int(_CELL * self.decoder_ratio) < _CELL:
            raise ValueError(f"decoder_ratio {self.decoder_ratio}: use 0, 0.25, 0.5 or 0.75")


def make_masks(cfg: MaskConfig, batch: int, grid: Sequence[int],
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks for a batch: ``(enc_mask, dec_mask)``, each ``[B, N]`` bool."""
    encoder_fn = tube_mask if cfg.encoder_kind == "tube" else random_mask
    enc = encoder_fn(batch, grid, cfg.encoder_ratio, generator)
    return enc, decoder_mask(enc, grid, cfg.decoder_ratio, generator)


def token_grid(num_frames: int, img_size: int, patch_size: int, tubelet_size: int) -> Grid:
    """The token grid ``(T', H', W')`` of a clip."""
    if num_frames % tubelet_size or img_size % patch_size:
        raise ValueError(f"{num_frames} frames x {img_size}px do not tile into tubelets "
                         f"of {tubelet_size} x {patch_size}px")
    return num_frames // tubelet_size, img_size // patch_size, img_size // patch_size
