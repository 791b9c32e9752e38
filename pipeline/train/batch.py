"""A loader batch's video -> model input on the training device.

The loader ships uint8 clips (in pinned memory when CUDA is present, see
:func:`pipeline.data.loader.data_loader`); here they are copied ``non_blocking``, normalised with
the ImageNet mean/std in float32 on the device, mixed (mixup / cutmix, fine-tuning), and only then
cast to the compute dtype: the same operations, in the same order and precision, as when the
loader workers normalised and the training loop mixed on the CPU, so the model sees the same
numbers (bit for bit in float32; tests/unit/test_mixup.py and test_video_transforms.py check it).
"""

from __future__ import annotations

import torch

from pipeline.core.pixels import normalize_pixels
from pipeline.train.mixup import Mixup


def channels_first(video: torch.Tensor) -> torch.Tensor:
    """``[..., T, H, W, C]`` -> ``[..., C, T, H, W]``, a view (no copy)."""
    lead = list(range(video.ndim - 4))
    return video.permute(*lead, video.ndim - 1, video.ndim - 4, video.ndim - 3, video.ndim - 2)


def model_input(video: torch.Tensor, device: torch.device | str, dtype: torch.dtype, mixer: Mixup | None = None,
                label: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 ``[..., T, H, W, C]`` (the loader's layout) -> (normalised ``dtype`` video ``[..., C, T, H, W]``
    on ``device``, soft targets or None).

    The layout change rides on the normalising copy (uint8 -> float32 reads the permuted view):
    the loader never transposes a clip on its CPU core, and on the device it costs nothing extra.

    With ``mixer`` (and ``label [B]``), the batch is mixed on the device and the targets
    ``[B, K]`` come back on it too; without, the second value is None.
    """
    if video.dtype != torch.uint8:
        raise ValueError(f"a loader batch's video must be uint8 [..., T, H, W, C], got {video.dtype} "
                         f"{tuple(video.shape)} (normalisation happens here, on the training device)")
    if video.ndim < 4 or video.shape[-1] not in (1, 3):
        raise ValueError(f"a loader batch's video must be uint8 [..., T, H, W, C], got {tuple(video.shape)}")
    x = normalize_pixels(channels_first(video.to(device, non_blocking=True)))  # float32 [..., C, T, H, W] on the device
    target = None
    if mixer is not None:
        if label is None:
            raise ValueError("mixup needs the batch's labels")
        x, target = mixer(x, label.to(device, non_blocking=True), inplace=True)
    return x.to(dtype), target
