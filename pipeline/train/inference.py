"""Classify a video file with a trained classifier (the test protocol: clips x crops, softmax averaged).

    model, card = load_classifier("models:/motion-vit@champion")
    predict_video(model, card, "clip.mp4", top_k=5)   # [("left", 0.91), ("cw", 0.04), ...]
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.core.errors import VideoError
from pipeline.data.decoding import ClipSpec, SampleError, test_views
from pipeline.data.shard_index import RawSample
from pipeline.train.model_registry import ModelCard
from pipeline.train.scoring import video_scores
from pipeline.video.transforms import TestTransform, TrainTransform


def clip_spec(card: ModelCard, num_clips: int = 0, num_crops: int = 0) -> ClipSpec:
    """The test views the model was trained for (clips / crops from the card unless given)."""
    d, m = card.data, card.model
    size = int(d.get("input_size", m.get("img_size", 224)))
    crops = num_crops or int(d.get("test_num_crops", 3))
    return ClipSpec(num_frames=int(d.get("num_frames", m.get("num_frames", 16))), stride=int(d.get("sampling_rate", 4)),
                    views=1, train=TrainTransform(size=size),
                    test=TestTransform(size=size, short_side=size, num_crops=crops),
                    test_clips=num_clips or int(d.get("test_num_clips", 5)))


def predict_video(model: nn.Module, card: ModelCard, video: str | Path | bytes, top_k: int = 5,
                  num_clips: int = 0, num_crops: int = 0) -> list[tuple[str, float]]:
    """Top-``k`` ``(class name, probability)`` for one video (a path or its bytes).

    Raises :class:`~pipeline.core.errors.VideoError` (one line) when the file is missing or cannot be decoded.
    """
    name = str(video)[:200] if not isinstance(video, bytes) else "<bytes>"
    if not isinstance(video, bytes):
        path = Path(video)
        if not path.is_file():
            raise VideoError(f"{path}: no such file")
        video = path.read_bytes()
    views = test_views(RawSample(key=name, members={"mp4": video}, shard=""), clip_spec(card, num_clips, num_crops),
                       require_label=False)
    if isinstance(views, SampleError):
        raise VideoError(f"{name}: cannot classify: {views.reason}")
    probs = video_scores(model, views.video[None])[0]
    names = card.class_names or [str(i) for i in range(len(probs))]
    top = probs.topk(min(top_k, len(probs)))
    return [(names[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


__all__ = ["clip_spec", "predict_video"]
