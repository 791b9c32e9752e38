"""Clip augmentation as torch ops: VideoMAE multi-scale crop, resize, flip, normalise; test crops.

Layouts. Input: uint8 frames ``[T, H, W, C]`` (what :func:`pipeline.video.decode.decode_frames`
returns; a numpy array or a tensor). Internally ``[T, C, H, W]`` so one ``interpolate`` call
resizes every frame of a clip at once. Output: uint8 crops (what the loader ships: 4x fewer
bytes than float32 through shared memory) or float32 ``[C, T, H, W]`` (the model's ``B, C, T, H, W``
without the batch), normalised with the ImageNet mean/std of :mod:`pipeline.core.pixels`.

Resizing is bilinear **with antialiasing**: VideoMAE (V1 and V2) runs ``GroupMultiScaleCrop`` on
PIL images, and PIL's bilinear resize filters over the whole downscaled footprint, which is what
``antialias=True`` reproduces (torch documents it as matching PIL). ``antialias=False`` (cv2-like)
is available for speed; it aliases when shrinking by more than ~2x. The test views
(:class:`TestTransform`) resize without antialiasing, as VideoMAE V2's validation and test do (cv2).

Every random choice comes from the ``torch.Generator`` passed in, so a seed gives the same crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.pixels import IMAGENET_MEAN, IMAGENET_STD, normalize_pixels

MULTISCALE_SCALES = (1.0, 0.875, 0.75, 0.66)

FramesLike = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class CropParams:
    """A crop box in input pixels (``x``, ``y`` = top-left corner) and whether to flip it."""

    x: int
    y: int
    w: int
    h: int
    flip: bool = False


def to_tchw(frames: FramesLike) -> torch.Tensor:
    """uint8 ``[T, H, W, C]`` (numpy or torch) -> uint8 ``[T, C, H, W]`` (a view when possible)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, C], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def to_thwc(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, C, H, W]`` -> ``[T, H, W, C]``, a view: the inverse of :func:`to_tchw`. A resized crop
    keeps its input's channels-last memory, so the view is contiguous and the loader collates it by
    a plain copy (a ``[C, T, H, W]`` transpose cost a strided copy per view: ~0.9 ms at 16 x 224)."""
    return x.permute(0, 2, 3, 1)


def _generator(seed: torch.Generator | int | None) -> torch.Generator | None:
    if isinstance(seed, int):
        return torch.Generator().manual_seed(seed)
    return seed  # None: torch's global RNG (not reproducible unless torch.manual_seed was called)


def _choice(n: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(n, (1,), generator=generator).item())


def fixed_crop_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int, more_fix_crop: bool = True) -> list[tuple[int, int]]:
    """The fixed ``(x, y)`` offset grid of VideoMAE's ``GroupMultiScaleCrop.fill_fix_offset``.

    5 offsets (corners + centre), or 13 with ``more_fix_crop`` (adds edge centres and the four
    quarter points), on a grid of step ``(image - crop) // 4``; same order as the original.
    """
    ws, hs = (image_w - crop_w) // 4, (image_h - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def multiscale_crop_sizes(
    image_w: int, image_h: int, out_size: int, scales: tuple[float, ...] = MULTISCALE_SCALES, max_distort: int = 1
) -> list[tuple[int, int]]:
    """Candidate ``(w, h)`` crop sizes of ``GroupMultiScaleCrop._sample_crop_size``.

    Sizes are ``int(short_side * scale)``, snapped to ``out_size`` when within 3 pixels; width
    and height scales may differ by at most ``max_distort`` steps (aspect jitter).
    """
    base = min(image_w, image_h)
    sizes = [int(base * s) for s in scales]
    snapped = [out_size if abs(s - out_size) < 3 else s for s in sizes]
    return [(w, h) for i, h in enumerate(snapped) for j, w in enumerate(snapped) if abs(i - j) <= max_distort]


def resized_crop(x: torch.Tensor, box: CropParams, out_hw: tuple[int, int], antialias: bool = True,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop ``box`` from every frame of ``x`` uint8 ``[T, C, H, W]``, resize to ``out_hw``, flip if asked.

    One slice + one ``interpolate`` for the whole clip. Returns uint8 ``[T, C, *out_hw]``: a new
    tensor, or ``out`` (uint8 ``[T, C, *out_hw]``, e.g. a channels-last slot of a batch) written in
    place. With ``out`` the resize writes straight into it (the same values as without), which
    spares the loader a copy of every view into its batch (~0.4 ms per 16 x 224 view).
    """
    crop = x[:, :, box.y : box.y + box.h, box.x : box.x + box.w]
    resize = tuple(crop.shape[-2:]) != tuple(out_hw)
    if out is not None and resize and not box.flip:
        _bilinear_into(crop, out_hw, antialias, out)
        return out
    if resize:
        # torch resizes uint8 directly on CPU (bilinear, with or without antialias): no float copy.
        crop = F.interpolate(crop, size=out_hw, mode="bilinear", align_corners=False, antialias=antialias)
    crop = crop.flip(-1) if box.flip else crop
    return crop if out is None else out.copy_(crop)


def _bilinear_into(x: torch.Tensor, out_hw: tuple[int, int], antialias: bool, out: torch.Tensor) -> None:
    """``F.interpolate(x, out_hw, mode="bilinear", align_corners=False, antialias=antialias)`` written
    into ``out``: the aten ``.out`` overloads of the ops ``interpolate`` calls (it has no ``out=``)."""
    if tuple(out.shape) != (*x.shape[:2], *out_hw) or out.dtype != x.dtype:
        raise ValueError(f"out must be {x.dtype} {(*x.shape[:2], *out_hw)}, got {out.dtype} {tuple(out.shape)}")
    op = torch.ops.aten._upsample_bilinear2d_aa if antialias else torch.ops.aten.upsample_bilinear2d
    op.out(x, list(out_hw), False, None, None, out=out)


def normalize(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 ``[T, C, H, W]`` -> float32 ``[C, T, H, W]``: ``(x / 255 - mean) / std`` per channel.

    Writes into ``out`` (float32 ``[C, T, H, W]``, e.g. a slot of a batch tensor) when given. The
    loader no longer calls it (it ships uint8; :mod:`pipeline.train.batch` normalises on the
    training device with the same :func:`~pipeline.core.pixels.normalize_pixels`).
    """
    return normalize_pixels(x.permute(1, 0, 2, 3), mean, std, out=out)


def denormalize(x: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD) -> torch.Tensor:
    """Invert :func:`normalize` for pictures: float ``[..., C, T, H, W]`` -> uint8 ``[..., T, H, W, C]``."""
    shape = (-1, 1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape) * 255.0
    pixels = (x.float() * s + m).round().clamp(0, 255).to(torch.uint8)
    return pixels.movedim(-4, -1)  # C to the end: [..., T, H, W, C]


def resize_short_side(x: torch.Tensor, short_side: int, antialias: bool = True) -> torch.Tensor:
    """Resize uint8 ``[T, C, H, W]`` so that ``min(H, W) == short_side``, keeping the aspect ratio.

    The long side is ``int(short_side * long / short)`` (floored), as VideoMAE V2's ``resize_clip``
    (``dataset/functional.py`` ``get_resize_sizes``) sizes its validation and test frames.
    """
    h, w = x.shape[-2:]
    if min(h, w) == short_side:
        return x
    if h <= w:
        out = (short_side, max(1, int(short_side * w / h)))
    else:
        out = (max(1, int(short_side * h / w)), short_side)
    return F.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=antialias)


def spatial_crop_boxes(height: int, width: int, crop: int, num_crops: int) -> list[CropParams]:
    """VideoMAE test crops: ``num_crops`` squares of ``crop`` evenly spaced along the long side.

    With 3 crops: left/centre/right for landscape frames, top/middle/bottom for portrait ones
    (starts ``int(i * (long - crop) / (num_crops - 1))``), centred on the short side. One crop is
    the centre crop of official validation (offsets ``int(round((side - crop) / 2))``, Python's
    round-half-to-even as there).
    """
    if crop > min(height, width):
        raise ValueError(f"crop {crop} larger than the frame {width}x{height}")
    long_, short = max(height, width), min(height, width)
    short_off = (short - crop) // 2
    if num_crops == 1:  # VideoMAE V2's CenterCrop (dataset/video_transforms.py): int(round((side - crop) / 2))
        short_off = int(round((short - crop) / 2))
        long_offs = [int(round((long_ - crop) / 2))]
    else:
        step = (long_ - crop) / (num_crops - 1)
        long_offs = [int(i * step) for i in range(num_crops)]
    if height >= width:  # portrait (or square): crops move down the frame
        return [CropParams(x=short_off, y=o, w=crop, h=crop) for o in long_offs]
    return [CropParams(x=o, y=short_off, w=crop, h=crop) for o in long_offs]


@dataclass
class TrainTransform:
    """VideoMAE training augmentation: multi-scale fixed-grid crop -> resize -> [flip] -> normalise.

    ``t(frames uint8 [T, H, W, C], generator) -> float32 [C, T, size, size]``. The crop box and the
    flip are drawn once per clip (same box on every frame) from ``generator`` (a
    ``torch.Generator`` or an int seed). Repeated augmentation = call it k times on one clip.
    ``t.crop`` and ``t.normalize`` are its two halves: the loader ships the uint8 crops and the
    training process normalises them on its device (:mod:`pipeline.train.batch`), always with the
    ImageNet mean/std of :mod:`pipeline.core.pixels` (so there is no per-transform mean/std to disagree).
    """

    size: int = 224
    scales: tuple[float, ...] = MULTISCALE_SCALES
    max_distort: int = 1
    more_fix_crop: bool = True
    flip: bool = False  # VideoMAE pre-training uses no flip
    antialias: bool = True

    def sample(self, height: int, width: int, generator: torch.Generator | int | None = None) -> CropParams:
        """Draw a crop box for a ``height`` x ``width`` clip (the random part of the transform)."""
        g = _generator(generator)
        pairs = multiscale_crop_sizes(width, height, self.size, self.scales, self.max_distort)
        crop_w, crop_h = pairs[_choice(len(pairs), g)]
        crop_w, crop_h = min(crop_w, width), min(crop_h, height)  # snapping to size may overshoot tiny frames
        offsets = fixed_crop_offsets(width, height, crop_w, crop_h, self.more_fix_crop)
        x, y = offsets[_choice(len(offsets), g)]
        flip = bool(self.flip and torch.rand(1, generator=g).item() < 0.5)
        return CropParams(x=x, y=y, w=crop_w, h=crop_h, flip=flip)

    def crop(self, frames: FramesLike, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """The random crop + resize (+ flip) alone: uint8 ``[T, C, size, size]``, not yet normalised."""
        x = to_tchw(frames)
        box = self.sample(x.shape[-2], x.shape[-1], generator)
        return resized_crop(x, box, (self.size, self.size), self.antialias)

    def normalize(self, crops: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[T, C, size, size]`` from :meth:`crop` -> float32 ``[C, T, size, size]`` (into ``out``)."""
        return normalize(crops, out=out)

    def __call__(self, frames: FramesLike, generator: torch.Generator | int | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        return self.normalize(self.crop(frames, generator), out=out)


@dataclass
class TestTransform:
    """VideoMAE test-time view(s): resize the short side to ``short_side``, cut ``num_crops`` squares.

    ``t.crops(frames uint8 [T, H, W, C]) -> uint8 [num_crops, C, T, size, size]`` (what the loader
    ships); ``t(frames)`` is the same normalised to float32. Deterministic. ``num_crops=1`` is the
    centre crop (validation), 3 is VideoMAE's three-crop test.
    """

    __test__ = False  # not a pytest test class despite its name

    size: int = 224
    short_side: int = 224
    num_crops: int = 3
    # Official validation / test frames are resized by cv2 INTER_LINEAR (dataset/functional.py resize_clip):
    # bilinear without antialiasing.
    antialias: bool = False

    def crops(self, frames: FramesLike) -> torch.Tensor:
        """The test crops, not yet normalised: uint8 ``[num_crops, C, T, size, size]``."""
        x = resize_short_side(to_tchw(frames), self.short_side, self.antialias)
        boxes = spatial_crop_boxes(x.shape[-2], x.shape[-1], self.size, self.num_crops)
        return torch.stack([resized_crop(x, b, (self.size, self.size)).permute(1, 0, 2, 3) for b in boxes])

    def __call__(self, frames: FramesLike, generator: torch.Generator | int | None = None) -> torch.Tensor:
        del generator  # accepted for a uniform call signature with TrainTransform; nothing is random
        return normalize_pixels(self.crops(frames))
