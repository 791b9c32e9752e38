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

Differences here, all for speed or for the loader's uint8 hand-off (see :mod:`pipeline.data.loader`):

- every op runs once on the uint8 ``[T, C, H, W]`` clip (one LUT gather, one ``grid_sample``), not
  per PIL frame; per-frame statistics (autocontrast, equalize, contrast) are still per frame;
- geometric ops use torch's bicubic (a = -0.75; PIL's is -0.5), the same geometry and fill; colour ops
  match PIL exactly, autocontrast to +-1 level (tests/unit/test_video_augment.py compares them with PIL);
- the crop is cut from the uint8 frames and normalised later, on the training device;
- the erased box's noise is the N(0, 1) normalised noise mapped to pixels (``(mean + std * z) * 255``),
  rounded and clipped to 0-255 (the official noise is not clipped: ~3% of its values lie outside).

Every random choice comes from the ``torch.Generator`` passed in: a seed gives the same clip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.core.pixels import IMAGENET_MEAN, IMAGENET_STD
from pipeline.video.transforms import CropParams, FramesLike, _generator, resized_crop, to_tchw

OFFICIAL_RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"
_MAX_LEVEL = 10.0
_FILL = 128
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
# The ops, on uint8 [T, C, H, W] (C = 3), every frame at once


def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-(frame, channel) lookup: ``lut`` uint8/long ``[T, C, 256]`` (or ``[256]``)."""
    if lut.ndim == 1:
        return lut.to(torch.uint8)[x.long()]
    t, c = x.shape[:2]
    flat = x.reshape(t, c, -1).long()
    return lut.to(torch.uint8).gather(2, flat).reshape(x.shape)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` (ITU-R 601-2 in 16-bit fixed point): uint8 ``[T, 1, H, W]``."""
    xi = x.to(torch.int32)
    return ((xi[:, 0] * 19595 + xi[:, 1] * 38470 + xi[:, 2] * 7471 + 0x8000) >> 16).to(torch.uint8).unsqueeze(1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ``ImageEnhance`` (``Image.blend``): ``degenerate + factor * (x - degenerate)``, truncated and clipped
    to uint8 as PIL does (bit-exact with PIL in tests/unit/test_video_augment.py)."""
    d = degenerate.float()
    return (d + factor * (x.float() - d)).trunc_().clamp_(0, 255).to(torch.uint8)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.autocontrast`` (cutoff 0): each channel of each frame stretched to 0-255."""
    t, c = x.shape[:2]
    flat = x.reshape(t, c, -1)
    lo, hi = flat.amin(-1).double(), flat.amax(-1).double()
    scale = 255.0 / (hi - lo).clamp(min=1)
    offset = -lo * scale
    ix = torch.arange(256, dtype=torch.float64)
    lut = (ix * scale[..., None] + offset[..., None]).trunc().clamp(0, 255)
    lut = torch.where((hi > lo)[..., None], lut, ix)  # a flat channel is left alone
    return _lut(x, lut.long())


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize``: per frame and channel, the histogram-equalising LUT of PIL."""
    t, c = x.shape[:2]
    flat = x.reshape(t * c, -1).long()
    rows = torch.arange(t * c).unsqueeze(1) * 256
    hist = torch.bincount((flat + rows).reshape(-1), minlength=t * c * 256).reshape(t * c, 256)
    last = hist.gather(1, (torch.arange(256) * (hist > 0)).amax(1, keepdim=True)).squeeze(1)  # last non-zero bin
    step = (hist.sum(1) - last) // 255
    n = torch.cumsum(hist, 1) - hist + (step // 2).unsqueeze(1)  # n before adding bin i
    lut = (n // step.clamp(min=1).unsqueeze(1)).clamp(max=255)
    identity = torch.arange(256).expand(t * c, 256)
    lut = torch.where((step > 0).unsqueeze(1), lut, identity)  # one colour, or too few pixels: unchanged
    return _lut(x, lut.reshape(t, c, 256))


def posterize(x: torch.Tensor, bits: int) -> torch.Tensor:
    if bits >= 8:
        return x
    return x & ((0xFF << (8 - bits)) & 0xFF)


def solarize(x: torch.Tensor, thresh: int) -> torch.Tensor:
    return torch.where(x >= thresh, 255 - x, x)


def solarize_add(x: torch.Tensor, add: int, thresh: int = 128) -> torch.Tensor:
    return torch.where(x < thresh, (x.to(torch.int16) + add).clamp(max=255).to(torch.uint8), x)


def color(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(_gray(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    mean = (_gray(x).float().mean(dim=(1, 2, 3), keepdim=True) + 0.5).floor()  # PIL: int(mean + 0.5) per frame
    return _blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ``ImageEnhance.Sharpness``: blend with the SMOOTH filter (3x3, centre 5, /13; borders kept)."""
    t, c, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = torch.ones(3, 3)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(c, 1, 3, 3)
    smooth = F.conv2d(x.float(), k, groups=c).round_().clamp_(0, 255)
    degenerate = x.float().clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def affine(x: torch.Tensor, matrix: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """PIL ``Image.transform(AFFINE, matrix, BICUBIC, fillcolor=128)`` on every frame: output pixel
    centre ``(x + .5, y + .5)`` samples the input at ``(a x + b y + c, d x + e y + f)``; points that
    fall outside the frame take the fill colour."""
    _, _, h, w = x.shape
    a, b, c, d, e, f = matrix
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    xin, yin = a * xs + b * ys + c, d * xs + e * ys + f
    grid = torch.stack([2.0 * xin / w - 1.0, 2.0 * yin / h - 1.0], dim=-1).expand(x.shape[0], h, w, 2)
    out = F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)
    outside = (xin < 0) | (xin >= w) | (yin < 0) | (yin >= h)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.masked_fill_(outside, _FILL)


def rotate_matrix(degrees: float, w: int, h: int) -> tuple[float, float, float, float, float, float]:
    """PIL ``Image.rotate``'s inverse affine matrix about the frame centre (counter-clockwise degrees)."""
    angle = -math.radians(degrees)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    cx, cy = w / 2.0, h / 2.0
    m[2] = m[0] * -cx + m[1] * -cy + cx
    m[5] = m[3] * -cx + m[4] * -cy + cy
    return tuple(m)  # type: ignore[return-value]


def apply_op(x: torch.Tensor, name: str, arg: float | None) -> torch.Tensor:
    """One RandAugment op with its argument on uint8 ``[T, C, H, W]``."""
    _, _, h, w = x.shape
    base = name.removesuffix("Increasing")
    if base == "AutoContrast":
        return auto_contrast(x)
    if base == "Equalize":
        return equalize(x)
    if base == "Invert":
        return 255 - x
    if base == "Posterize":
        return posterize(x, int(arg))  # type: ignore[arg-type]
    if base == "Solarize":
        return solarize(x, int(arg))  # type: ignore[arg-type]
    if base == "SolarizeAdd":
        return solarize_add(x, int(arg))  # type: ignore[arg-type]
    if base == "Color":
        return color(x, float(arg))  # type: ignore[arg-type]
    if base == "Contrast":
        return contrast(x, float(arg))  # type: ignore[arg-type]
    if base == "Brightness":
        return brightness(x, float(arg))  # type: ignore[arg-type]
    if base == "Sharpness":
        return sharpness(x, float(arg))  # type: ignore[arg-type]
    v = float(arg)  # type: ignore[arg-type]
    if base == "Rotate":
        return affine(x, rotate_matrix(v, w, h))
    if base == "ShearX":
        return affine(x, (1.0, v, 0.0, 0.0, 1.0, 0.0))
    if base == "ShearY":
        return affine(x, (1.0, 0.0, 0.0, v, 1.0, 0.0))
    if base == "TranslateXRel":
        return affine(x, (1.0, 0.0, v * w, 0.0, 1.0, 0.0))
    if base == "TranslateYRel":
        return affine(x, (1.0, 0.0, 0.0, 0.0, 1.0, v * h))
    raise ValueError(f"unknown RandAugment op {name!r}")


def rand_augment(x: torch.Tensor, ops: list[tuple[str, float | None]]) -> torch.Tensor:
    for name, arg in ops:
        x = apply_op(x, name, arg)
    return x


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
