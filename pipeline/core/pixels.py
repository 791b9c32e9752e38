"""Pixel conventions shared by the data and the model code (neither layer imports the other).

The ImageNet mean/std every model here is trained with, and the one uint8 -> float op that
applies them. The loader's baseline (:func:`pipeline.video.transforms.normalize`) and the
on-device hand-off (:func:`pipeline.train.batch.model_input`) both call :func:`normalize_pixels`:
the same float32 constants (made on the CPU) and the same two IEEE operations (multiply, then
add; no fused multiply-add), so a clip normalised on the training device has the same bits as
one normalised in a loader worker.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def scale_shift(mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``[C, 1, 1, 1]`` ``1 / (255 std)`` and ``-mean / std``, computed on the CPU, then moved."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    scale, shift = 1.0 / (s * 255.0), -m / s
    return scale.to(device), shift.to(device)


def normalize_pixels(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``[..., C, T, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel, on ``x``'s device.

    Writes into ``out`` (float32, same shape) when given. One float buffer converted and scaled
    in place: ~4x faster on a CPU core than ``(x.float() - mean) / std`` with its temporaries,
    and equal to it within 1 ulp.
    """
    if x.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8 [..., C, T, H, W], got {x.dtype} {tuple(x.shape)}")
    scale, shift = scale_shift(mean, std, x.device)
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    return out.copy_(x).mul_(scale).add_(shift)
