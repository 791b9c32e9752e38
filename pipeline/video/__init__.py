"""Video I/O: probe, decode by index, transcode to H.264, clip sampling and clip transforms.

Layouts: decoded frames are uint8 RGB ``[T, H, W, 3]``; transforms return float32
``[C, T, H, W]`` (``TestTransform``: ``[num_crops, C, T, H, W]``).

Names are imported lazily (PEP 562) so that a shard worker using ``probe``/``transcode`` does not
pay for importing torch, and the samplers work without PyAV.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "pipeline.video.decode": ["VideoReader", "decode_frames", "fallback_counts", "open_video"],
    "pipeline.video.encode": ["H264Writer", "encode_h264"],
    "pipeline.video.probe": ["VideoInfo", "probe"],
    "pipeline.video.augment": ["FinetuneTransform"],
    "pipeline.video.sampling": ["official_clip_indices", "segment_indices", "test_clip_indices", "train_clip_indices"],
    "pipeline.video.transcode": ["transcode"],
    "pipeline.video.transforms": [
        "IMAGENET_MEAN", "IMAGENET_STD", "MULTISCALE_SCALES", "TestTransform", "TrainTransform", "denormalize", "normalize",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.video' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return __all__
