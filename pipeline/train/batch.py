"""A loader batch's video -> model input on the training device.

The loader ships uint8 clips (in pinned memory when CUDA is present, see
:func:`pipeline.data.loader.data_loader`); here they are copied ``non_blocking``, normalised with
the ImageNet mean/std in float32 on the device, mixed (mixup / cutmix, fine-tuning), and only then
cast to the compute dtype: the same operations, in the same order and precision, as when the
loader workers normalised and the training loop mixed on the CPU, so the model sees the same
numbers (bit for bit in float32; tests/unit/test_mixup.py and test_video_transforms.py check it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.core.pixels import normalize_pixels
from pipeline.train.mixup import Mixup


def channels_first(video: torch.Tensor) -> torch.Tensor:
    """``[..., T, H, W, C]`` -> ``[..., C, T, H, W]``, a view (no copy)."""
    lead = list(range(video.ndim - 4))
    return video.permute(*lead, video.ndim - 1, video.ndim - 4, video.ndim - 3, video.ndim - 2)


def batch_video(batch: dict[str, Any], device: torch.device | str, first: int | None = None) -> torch.Tensor:
    """A training batch's views (its ``first`` ones, or all), uint8 ``[B, T, S, S, C]`` on ``device``:
    the loader's resized views, or, with ``data.crop_on = "device"``, cut from the batch's clips and
    resized there (:func:`crop_views`)."""
    if "video" in batch:
        return batch["video"][:first].to(device, non_blocking=True)
    clips = batch["clips"].to(device, non_blocking=True)
    return crop_views(clips, batch["boxes"][:first], int(batch["crop_size"]), bool(batch["crop_antialias"]))


def crop_views(clips: torch.Tensor, boxes: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Cut and resize each view from its clip: ``clips`` uint8 ``[N, T, H, W, C]``, ``boxes`` long
    ``[B, 6]`` rows ``(clip, y, x, h, w, flip)`` (on the host: reading them costs no device sync) ->
    uint8 ``[B, T, size, size, C]`` on the clips' device.

    Bilinear with antialias as the loader's resize (:func:`pipeline.video.transforms.resized_crop`),
    in float32 then rounded: GPUs resize floating point only. The values are within 1 of 255 of the
    loader's uint8 resize (its fixed-point arithmetic rounds on its own; tests/unit/test_loader.py).
    """
    views = []
    for i, y, x, h, w, flip in boxes.tolist():
        crop = clips[i, :, y : y + h, x : x + w].permute(0, 3, 1, 2).float()  # [T, C, h, w]
        view = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        views.append(view.flip(-1) if flip else view)
    out = torch.stack(views).round_().clamp_(0, 255).to(torch.uint8)  # [B, T, C, S, S]
    return out.permute(0, 1, 3, 4, 2)


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
