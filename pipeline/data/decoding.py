"""Per-sample work of the loader: decode an mp4 once, cut k training views or the test views.

Every random choice is seeded from ``(seed, epoch, key, pass, view)`` through :func:`seed_of`, a
stable hash, never from global RNG state: a sample gets the same frames and crops whichever
rank, worker or resumed process decodes it. Failures are not raised but returned as a
:class:`SampleError` with a one-line reason, which the loader counts in :class:`DataStats`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch

from pipeline.core.errors import DataError
from pipeline.data.shard_index import RawSample
from pipeline.video.augment import FinetuneTransform
from pipeline.video.decode import open_video
from pipeline.video.probe import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, VideoInfo
from pipeline.video.sampling import official_clip_indices, test_clip_indices, train_clip_indices
from pipeline.video.transforms import CropParams, TestTransform, TrainTransform, resized_crop, to_tchw, to_thwc

MAX_REASONS = 8
DEFER_MAX_RATIO = 2  # crops are resized at the batch only if the decoded clip is at most this x their bytes


def seed_of(*parts: object) -> int:
    """A 63-bit seed from any printable parts; stable across processes (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass
class DataStats:
    """Loader health counters. ``samples_lost``: samples a broken shard never delivered.

    ``seen = samples_ok + decode_errors + samples_lost`` (every sample the index promised and the
    loader reached is in exactly one bucket); ``shard_errors`` counts broken shards (or slices).
    ``by_source``: with ``data.sources``, the ok samples per source (short name); they add up to
    ``samples_ok``. Empty (and left out of :meth:`to_dict`) for a single shard set.
    """

    samples_ok: int = 0
    decode_errors: int = 0
    shard_errors: int = 0
    samples_lost: int = 0
    reasons: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_REASONS))
    by_source: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.decode_errors + self.samples_lost

    @property
    def seen(self) -> int:
        return self.samples_ok + self.errors

    @property
    def error_fraction(self) -> float:
        return self.errors / self.seen if self.seen else 0.0

    def add(self, other: DataStats | dict[str, Any]) -> None:
        """Accumulate another counter (or its :meth:`to_dict` form, as carried in a batch)."""
        d = other.to_dict() if isinstance(other, DataStats) else other
        self.samples_ok += int(d.get("samples_ok", 0))
        self.decode_errors += int(d.get("decode_errors", 0))
        self.shard_errors += int(d.get("shard_errors", 0))
        self.samples_lost += int(d.get("samples_lost", 0))
        self.reasons.extend(d.get("reasons", ()))
        for name, count in (d.get("by_source") or {}).items():
            self.by_source[name] = self.by_source.get(name, 0) + int(count)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples_ok": self.samples_ok, "decode_errors": self.decode_errors,
                               "shard_errors": self.shard_errors, "samples_lost": self.samples_lost,
                               "reasons": list(self.reasons)}
        if self.by_source:
            out["by_source"] = dict(self.by_source)
        return out

    def check(self, max_fraction: float, min_samples: int) -> None:
        """DataError once the error fraction passes ``max_fraction`` after ``min_samples`` samples."""
        if self.seen >= min_samples and self.error_fraction > max_fraction:
            raise DataError(
                f"too many data errors: {self.errors} of {self.seen} samples ({self.error_fraction:.1%}) "
                f"> data.max_decode_error_fraction {max_fraction:.1%} "
                f"({self.decode_errors} undecodable, {self.samples_lost} lost in {self.shard_errors} broken shards); "
                f"last: {'; '.join(list(self.reasons)[-3:])}"
            )


@dataclass(frozen=True)
class SampleError:
    """Why a sample yields nothing (the loader logs and counts it)."""

    key: str
    reason: str


class DeferredCrops(Sequence[torch.Tensor]):
    """The k multi-scale crops of one decoded clip, drawn but not yet resized.

    The loader resizes each one straight into its batch slot (:meth:`write`), which spares a copy
    per view (~0.4 ms at 16 x 224, a sixth of the per-view work); indexing resizes into a new
    tensor. Either way the values are those of :meth:`TrainTransform.crop` with the same generator.
    Holds the decoded frames until the last view is written.
    """

    def __init__(self, clip: torch.Tensor, boxes: Sequence[CropParams], size: int, antialias: bool) -> None:
        self.clip, self.boxes, self.size, self.antialias = clip, tuple(boxes), size, antialias

    def __len__(self) -> int:
        return len(self.boxes)

    @overload
    def __getitem__(self, v: int) -> torch.Tensor: ...
    @overload
    def __getitem__(self, v: slice) -> list[torch.Tensor]: ...
    def __getitem__(self, v: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(v, slice):
            return [self[i] for i in range(len(self))[v]]
        return to_thwc(resized_crop(self.clip, self.boxes[v], (self.size, self.size), self.antialias))

    @property
    def view_shape(self) -> tuple[int, ...]:
        """One view's shape, ``(T, S, S, C)``, without resizing anything."""
        t, c = self.clip.shape[:2]
        return (t, self.size, self.size, c)

    def write(self, v: int, out: torch.Tensor) -> None:
        """Resize view ``v`` into ``out``: uint8 ``[T, S, S, C]``, contiguous (a batch slot)."""
        resized_crop(self.clip, self.boxes[v], (self.size, self.size), self.antialias, out=out.permute(0, 3, 1, 2))


@dataclass
class TrainViews:
    """k augmented views of one decoded clip: ``video``, k uint8 crops ``[T, S, S, C]`` (channels
    last, as decoded and as the resize leaves them: collating them is a plain copy; the training
    process normalises and transposes them on its device), ``frames [T]``. With the pre-training
    crop (and a clip at most ``DEFER_MAX_RATIO`` x its views' bytes), ``video`` is a
    :class:`DeferredCrops` that the loader resizes into the batch itself (:meth:`write`)."""

    key: str
    video: Sequence[torch.Tensor]
    frames: torch.Tensor
    label: int

    @property
    def view_shape(self) -> tuple[int, ...]:
        """The shape of one crop, ``(T, S, S, C)`` (without resizing a deferred one)."""
        return self.video.view_shape if isinstance(self.video, DeferredCrops) else tuple(self.video[0].shape)

    def write(self, v: int, out: torch.Tensor) -> None:
        """Put crop ``v`` into ``out`` (uint8 ``[T, S, S, C]``, contiguous): resized straight into it when
        deferred, copied otherwise."""
        if isinstance(self.video, DeferredCrops):
            self.video.write(v, out)
        else:
            out.copy_(self.video[v])


@dataclass
class TestViews:
    """All test views of one video: ``video [clips * crops, T, S, S, C]`` uint8 (clip-major, not normalised)."""

    __test__ = False  # not a pytest class

    key: str
    video: torch.Tensor
    label: int


@dataclass(frozen=True)
class ClipSpec:
    """How to turn decoded frames into model input (built once from the data config)."""

    num_frames: int
    stride: int
    views: int
    train: TrainTransform | FinetuneTransform
    test: TestTransform
    test_clips: int = 1
    backend: str = "auto"
    threads: int = 1
    # Training frames: "stride" = train_clip_indices (pre-training), "official" = the VideoMAE V2
    # fine-tuning window (official_clip_indices: linspace over clip_len x stride, last frame repeated).
    sampling: str = "stride"
    # Where the pre-training crops are resized: "loader" (into the batch, on the loader's core) or
    # "device" (the batch ships each decoded clip once with its views' boxes: see crop_batch).
    crop_on: str = "loader"

    def train_indices(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        if self.sampling == "official":
            return official_clip_indices(num_frames, self.num_frames, self.stride, rng)
        return train_clip_indices(num_frames, self.num_frames, self.stride, rng)


def sample_label(raw: RawSample, required: bool) -> int:
    """The ``.cls`` label, -1 when absent; DataError when ``required`` and absent, ValueError if malformed."""
    data = raw.members.get("cls")
    if data is None:
        if required:
            raise DataError(f"shards have no labels: sample {raw.key} in {raw.shard} has no .cls member "
                            "(shard a manifest with a label column for fine-tuning/evaluation)")
        return -1
    return int(data.decode("ascii").strip())


def _video_bytes(raw: RawSample) -> bytes:
    # A shard from elsewhere may name members "../x.mp4" or "/abs/x.mp4": such a key must not
    # travel on (keys end up in feature tables and file names downstream).
    if raw.shard and (raw.key.startswith("/") or ".." in raw.key.split("/")):  # (a file given to predict is not)
        raise ValueError(f"unsafe member name {raw.key!r} (absolute or '..' path)")
    data = raw.members.get("mp4")
    if data is None:
        raise ValueError(f"no .mp4 member (has: {', '.join(sorted(raw.members)) or 'nothing'})")
    if "json" in raw.members:
        json.loads(raw.members["json"])  # a garbage metadata member means a damaged sample
    return data


_INFO_FIELDS = tuple(f.name for f in dataclasses.fields(VideoInfo))


def stated_info(raw: RawSample) -> VideoInfo | None:
    """The :class:`VideoInfo` that ``jobs.shard`` probed and stored in the ``.json`` member, or None.

    Handing it to ``open_video`` saves the per-sample PyAV probe (a container open plus a frame
    decode, ~10% of a sample's loading time); decord's frame count is still checked against it.
    """
    try:
        meta = json.loads(raw.members["json"])
        info = VideoInfo(**{k: meta[k] for k in _INFO_FIELDS})
        w, h, n = int(info.width), int(info.height), int(info.num_frames)
    except (KeyError, TypeError, ValueError):
        return None  # a shard written elsewhere: open_video probes
    # Stated sizes past the probe's bomb limits (or nonsense) are not trusted: the probe decides.
    if not (0 < w <= DEFAULT_MAX_SIDE and 0 < h <= DEFAULT_MAX_SIDE and w * h <= DEFAULT_MAX_PIXELS
            and 0 < n <= DEFAULT_MAX_FRAMES):
        return None
    return info


def train_views(raw: RawSample, spec: ClipSpec, seed: int, epoch: int, require_label: bool) -> TrainViews | SampleError:
    """Decode ``spec.num_frames`` frames once and cut ``spec.views`` independently cropped views.

    The views share the frame indices (VideoMAE V2 repeated augmentation: one decode, k crops);
    view ``v``'s crop is seeded from ``(seed, epoch, key, pass, v)``.
    """
    try:
        label = sample_label(raw, require_label)
        data = _video_bytes(raw)
        rng = np.random.default_rng(seed_of(seed, epoch, raw.key, raw.pass_index, "frames"))
        with open_video(data, spec.backend, info=stated_info(raw), threads=spec.threads) as reader:  # type: ignore[arg-type]
            idx = spec.train_indices(reader.num_frames, rng)
            frames = reader.get(idx)
        gens = [torch.Generator().manual_seed(seed_of(seed, epoch, raw.key, raw.pass_index, v)) for v in range(spec.views)]
        video = _train_crops(spec.train, frames, gens, always_defer=spec.crop_on == "device")
    except DataError:
        raise  # unlabelled shards cannot become labelled by skipping samples
    except Exception as exc:  # noqa: BLE001 - every per-sample failure is counted, not fatal
        return SampleError(raw.key, _reason(exc))
    return TrainViews(raw.key, video, torch.from_numpy(idx), label)


def _train_crops(train: TrainTransform | FinetuneTransform, frames: np.ndarray,
                 gens: list[torch.Generator], always_defer: bool = False) -> Sequence[torch.Tensor]:
    """The views of ``frames``, one per generator: the pre-training crop deferred (boxes drawn now,
    resized into the batch, or on the training device with ``always_defer``), any other transform
    (fine-tuning's RandAugment...) applied now."""
    if type(train) is not TrainTransform:  # a subclass may crop differently
        return tuple(to_thwc(train.crop(frames, g)) for g in gens)
    clip = to_tchw(frames)
    boxes = [train.sample(clip.shape[-2], clip.shape[-1], g) for g in gens]  # what train.crop draws
    crops = DeferredCrops(clip, boxes, train.size, train.antialias)
    if not always_defer and clip.nbytes > DEFER_MAX_RATIO * len(crops) * math.prod(crops.view_shape):
        # A clip much larger than its views (one view, or a 1080p source) is not held until its batch:
        # the loader's pending samples would take several times their views' memory. Resized now.
        return tuple(crops)
    return crops


def crop_batch(views: Sequence[tuple[TrainViews, int]]) -> dict[str, Any]:
    """A batch's views for ``data.crop_on = "device"``: each decoded clip once, and a box per view.

    ``clips``: uint8 ``[N, T, H, W, C]``, the N distinct clips of the views (channels last, as
    decoded; zero-padded to the largest H and W among them); ``boxes``: long ``[B, 6]``, per view
    ``(clip, y, x, h, w, flip)`` in clip pixels; ``crop_size`` and ``crop_antialias``: the resize.
    :func:`pipeline.train.batch.batch_video` cuts and resizes the views on the training device.
    At k views per decode a clip travels once instead of k resized copies (a 320 x 426 clip is
    0.68 of four 224 x 224 views), and the loader's core does no resize.
    """
    clips: list[torch.Tensor] = []
    where: dict[int, int] = {}
    rows = []
    first = views[0][0].video
    if not isinstance(first, DeferredCrops):
        raise ValueError("data.crop_on = 'device' needs deferred pre-training crops (the multiscale crop)")
    for tv, v in views:
        crops = tv.video
        assert isinstance(crops, DeferredCrops)
        i = where.setdefault(id(crops), len(clips))
        if i == len(clips):
            clips.append(crops.clip)
        box = crops.boxes[v]
        rows.append([i, box.y, box.x, box.h, box.w, int(box.flip)])
    t, c = clips[0].shape[:2]
    h, w = max(x.shape[2] for x in clips), max(x.shape[3] for x in clips)
    out = torch.zeros(len(clips), t, h, w, c, dtype=torch.uint8)
    for slot, clip in zip(out, clips):
        slot[:, : clip.shape[2], : clip.shape[3]].copy_(clip.permute(0, 2, 3, 1))
    return {"clips": out, "boxes": torch.tensor(rows, dtype=torch.long), "crop_size": first.size,
            "crop_antialias": first.antialias}


def test_views(raw: RawSample, spec: ClipSpec, require_label: bool) -> TestViews | SampleError:
    """``spec.test_clips`` evenly spaced clips x ``spec.test.num_crops`` crops, decoded in one pass."""
    try:
        label = sample_label(raw, require_label)
        data = _video_bytes(raw)
        with open_video(data, spec.backend, info=stated_info(raw), threads=spec.threads) as reader:  # type: ignore[arg-type]
            clips = test_clip_indices(reader.num_frames, spec.num_frames, spec.stride, spec.test_clips)
            frames = reader.get(np.concatenate(clips))  # one decode pass for every clip
        t = spec.num_frames
        video = torch.cat([spec.test.crops(frames[i * t : (i + 1) * t]) for i in range(len(clips))]).permute(0, 2, 3, 4, 1)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        return SampleError(raw.key, _reason(exc))
    return TestViews(raw.key, video, label)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"


# The name starts with "test_": stop pytest from collecting it when a test module imports it.
test_views.__test__ = False  # type: ignore[attr-defined]
