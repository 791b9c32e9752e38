"""Fine-tuning augmentation of the official VideoMAE V2 recipe, as torch ops over a whole clip at once.

Official (OpenGVLab/VideoMAEv2 ``dataset/datasets.py`` ``VideoClsDataset._aug_frame``, training mode)::

    RandAugment "rand-m7-n4-mstd0.5-inc1" on the decoded frames   (dataset/rand_augment.py: one op sequence,
        bicubic, fill (128, 128, 128), translate 0.45 of the side;  with its sampled magnitudes and signs,
        ops drawn uniformly with replacement, each applied w.p. 0.5) for every frame of the clip)
    -> normalise -> random resized crop to input_size, area 0.08-1, aspect 0.75-1.3333 (log-uniform),
       bilinear, no antialias (video_transforms.random_resized_crop; spatial_sampling takes this branch
       because scale and aspect are given, so its min_scale 256 / max_scale 320 short-side jitter is unused)
    -> horizontal flip w.p. 0.5 (not for SSv2)
    -> random erasing w.p. 0.25, mode "pixel", count 1, one box for all frames (random_erasing.py, cube=True),
       per-pixel N(0, 1) noise in normalised units

Mixup 0.8 / cutmix 1.0 / label smoothing 0.1 follow in the trainer (:mod:`pipeline.train.mixup`).

Differences here, for speed and for the loader's uint8 hand-off (see :mod:`pipeline.data.loader`):

- one op sequence is drawn per clip and PIL applies it to each frame (PIL's C ops are the official ones,
  and they are 3-5x faster than the same ops as torch ops over the whole uint8 clip on a CPU core);
- the crop is cut from the uint8 frames (bilinear, no antialias, as official) and normalised later, on the
  training device (official normalises first; the same up to rounding);
- the erased box's noise is the N(0, 1) normalised noise mapped to pixels (``(mean + std * z) * 255``),
  rounded and clipped to 0-255 (the official noise is not clipped: ~3% of its values lie outside).

Every random choice comes from the ``torch.Generator`` passed in: a seed gives the same clip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from pipeline.core.pixels import IMAGENET_MEAN, IMAGENET_STD
from pipeline.video.transforms import CropParams, FramesLike, _generator, resized_crop, to_tchw

OFFICIAL_RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
_MAX_LEVEL = 10.0
_FILL_RGB = (128, 128, 128)
_TRANSLATE_PCT = 0.45

# dataset/rand_augment.py: _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS (the "inc1" set), same order.
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                              "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                              "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
                              "TranslateYRel")


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed ``rand-m{M}-n{N}-mstd{S}-inc{0|1}`` string (defaults as official: m10, n2, mstd0, inc0)."""

    magnitude: float = 10.0
    num_layers: int = 2
    magnitude_std: float = 0.0
    increasing: bool = False

    @property
    def transforms(self) -> tuple[str, ...]:
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


def parse_rand_augment(config: str) -> RandAugmentSpec:
    """``"rand-m7-n4-mstd0.5-inc1"`` -> :class:`RandAugmentSpec`; ValueError for anything else."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
    kw: dict[str, float | int | bool] = {}
    for part in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", part)
        if m is None or m.group(1) not in ("m", "n", "mstd", "inc"):
            raise ValueError(f"unknown RandAugment part {part!r} in {config!r} (knows m, n, mstd, inc)")
        key, val = m.groups()
        if key == "m":
            kw["magnitude"] = float(val)
        elif key == "n":
            kw["num_layers"] = int(val)
        elif key == "mstd":
            kw["magnitude_std"] = float(val)
        else:
            kw["increasing"] = bool(int(val))
    return RandAugmentSpec(**kw)  # type: ignore[arg-type]


def _rand(g: torch.Generator | None) -> float:
    return float(torch.rand(1, generator=g, dtype=torch.float64))


def _negate(v: float, g: torch.Generator | None) -> float:
    return -v if _rand(g) > 0.5 else v  # official _randomly_negate


def _level_arg(name: str, level: float, g: torch.Generator | None) -> float | None:
    """The op's argument at ``level`` in [0, 10]: official ``LEVEL_TO_ARG`` (random signs from ``g``)."""
    x = level / _MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return _negate(x * 30.0, g)
    if name == "Posterize":
        return int(x * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(x * 4)
    if name == "Solarize":
        return int(x * 256)
    if name == "SolarizeIncreasing":
        return 256 - int(x * 256)
    if name == "SolarizeAdd":
        return int(x * 110)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return x * 1.8 + 0.1
    if name.endswith("Increasing"):  # Color/Contrast/Brightness/SharpnessIncreasing
        return 1.0 + _negate(x * 0.9, g)
    if name in ("ShearX", "ShearY"):
        return _negate(x * 0.3, g)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate(x * _TRANSLATE_PCT, g)
    raise ValueError(f"unknown RandAugment op {name!r}")


def sample_ops(spec: RandAugmentSpec, generator: torch.Generator | None) -> list[tuple[str, float | None]]:
    """The ops one clip gets, with their arguments: official ``RandAugment.__call__`` + ``AugmentOp``.

    ``num_layers`` ops drawn uniformly with replacement; each is kept with probability 0.5, its
    magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10], then its argument (and
    sign) drawn once. The list is applied to every frame of the clip.
    """
    names = spec.transforms
    picks = torch.randint(len(names), (spec.num_layers,), generator=generator).tolist()
    ops: list[tuple[str, float | None]] = []
    for i in picks:
        if _rand(generator) > 0.5:  # official: prob 0.5, `random.random() > prob` skips
            continue
        level = spec.magnitude
        if spec.magnitude_std > 0:
            level = level + spec.magnitude_std * float(torch.randn(1, generator=generator, dtype=torch.float64))
        level = min(_MAX_LEVEL, max(0.0, level))
        ops.append((names[i], _level_arg(names[i], level, generator)))
    return ops


# ------------------------------------------------------------------------------------------------
# The ops: PIL's, as official (dataset/rand_augment.py NAME_TO_OP), each one applied to every frame


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=_FILL_RGB)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    if bits >= 8:
        return img
    if bits <= 0:  # official (old PIL) keeps no bit: black; PIL >= 10 refuses 0 bits
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def apply_op(img: Image.Image, name: str, arg: float | None) -> Image.Image:
    """One RandAugment op with its argument on one PIL frame (official ``NAME_TO_OP``; bicubic, grey fill)."""
    base = name.removesuffix("Increasing")
    w, h = img.size
    if base == "AutoContrast":
        return ImageOps.autocontrast(img)
    if base == "Equalize":
        return ImageOps.equalize(img)
    if base == "Invert":
        return ImageOps.invert(img)
    if base == "Posterize":
        return _posterize(img, int(arg))  # type: ignore[arg-type]
    if base == "Solarize":
        return ImageOps.solarize(img, int(arg))  # type: ignore[arg-type]
    if base == "SolarizeAdd":
        return _solarize_add(img, int(arg))  # type: ignore[arg-type]
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, base)(img).enhance(float(arg))  # type: ignore[arg-type]
    v = float(arg)  # type: ignore[arg-type]
    if base == "Rotate":
        return img.rotate(v, resample=Image.BICUBIC, fillcolor=_FILL_RGB)
    if base == "ShearX":
        return _affine(img, (1.0, v, 0.0, 0.0, 1.0, 0.0))
    if base == "ShearY":
        return _affine(img, (1.0, 0.0, 0.0, v, 1.0, 0.0))
    if base == "TranslateXRel":
        return _affine(img, (1.0, 0.0, v * w, 0.0, 1.0, 0.0))
    if base == "TranslateYRel":
        return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, v * h))
    raise ValueError(f"unknown RandAugment op {name!r}")


def rand_augment(x: torch.Tensor, ops: list[tuple[str, float | None]]) -> torch.Tensor:
    """uint8 ``[T, C, H, W]`` -> the same with ``ops`` applied, in order, to every frame alike."""
    if not ops:
        return x
    frames = [Image.fromarray(f) for f in x.permute(0, 2, 3, 1).contiguous().numpy()]
    for name, arg in ops:
        frames = [apply_op(f, name, arg) for f in frames]
    return torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------
# Random resized crop and random erasing (official parameter draws, from a torch.Generator)


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return lo + (hi - lo) * _rand(g)


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    """Uniform integer in ``[lo, hi]`` (both inclusive, as Python's ``random.randint``)."""
    return lo + int(torch.randint(hi - lo + 1, (1,), generator=g))


def resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                     g: torch.Generator | None, attempts: int = 10) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` as official ``_get_param_spatial_crop`` (log-uniform aspect, 10 tries,
    then the central crop clamped to the aspect range)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = _uniform(*scale, g) * area
        aspect = math.exp(_uniform(*log_ratio, g))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, g), _randint(0, width - w, g), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def erase_box(height: int, width: int, g: torch.Generator | None, min_area: float = 0.02, max_area: float = 1 / 3,
              min_aspect: float = 0.3, attempts: int = 100) -> tuple[int, int, int, int] | None:
    """``(top, left, h, w)`` of official ``RandomErasing._erase_cube`` (count 1), or None when no
    try fits (the probability draw is the caller's)."""
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(attempts):
        target = _uniform(min_area, max_area, g) * height * width
        aspect = math.exp(_uniform(*log_aspect, g))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            return _randint(0, height - h, g), _randint(0, width - w, g), h, w
    return None


def erase_pixels(x: torch.Tensor, box: tuple[int, int, int, int], g: torch.Generator | None) -> torch.Tensor:
    """Fill ``box`` of every frame of uint8 ``[T, C, H, W]`` (in place) with per-pixel noise: N(0, 1) in
    normalised units (official mode "pixel"), as uint8 pixels."""
    top, left, h, w = box
    t, c = x.shape[:2]
    z = torch.randn((t, c, h, w), generator=g)
    mean = torch.tensor(IMAGENET_MEAN).view(1, c, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).view(1, c, 1, 1) * 255.0
    x[:, :, top : top + h, left : left + w] = (mean + std * z).round_().clamp_(0, 255).to(torch.uint8)
    return x


@dataclass
class FinetuneTransform:
    """VideoMAE V2 fine-tuning augmentation (see the module docstring) with the ``TrainTransform`` interface.

    ``t.crop(frames uint8 [T, H, W, C], generator) -> uint8 [T, C, size, size]``: RandAugment
    (``auto_augment``; '' = none) -> random resized crop -> flip -> random erasing
    (``erase_prob``; 0 = none). Normalisation happens on the training device as for every loader batch.
    """

    size: int = 224
    auto_augment: str = OFFICIAL_RAND_AUGMENT
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333)
    flip: bool = True
    erase_prob: float = 0.25
    antialias: bool = False  # official: F.interpolate bilinear, no antialias

    def __post_init__(self) -> None:
        self.rand_augment = parse_rand_augment(self.auto_augment) if self.auto_augment else None
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {self.erase_prob}")

    def crop(self, frames: FramesLike, generator: torch.Generator | int | None = None) -> torch.Tensor:
        g = _generator(generator)
        x = to_tchw(frames)
        if self.rand_augment is not None:
            x = rand_augment(x, sample_ops(self.rand_augment, g))
        top, left, h, w = resized_crop_box(x.shape[-2], x.shape[-1], self.scale, self.ratio, g)
        flip = self.flip and _rand(g) < 0.5
        x = resized_crop(x, CropParams(x=left, y=top, w=w, h=h, flip=flip), (self.size, self.size), self.antialias)
        if self.erase_prob > 0 and _rand(g) <= self.erase_prob:  # official: `random.random() > p` skips
            box = erase_box(self.size, self.size, g)
            if box is not None:
                x = erase_pixels(x.clone(), box, g)  # never write into the decoded frames: other views share them
        return x.contiguous()
