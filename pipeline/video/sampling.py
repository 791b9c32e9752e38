"""Which frames of a video make a clip: training, test and segment (TSN-style) samplers.

All samplers return int64 frame indices in ``[0, num_frames)``, monotone non-decreasing, exactly
``clip_len`` of them, for any ``num_frames >= 1`` — a short video never makes a short clip, its
frames are repeated instead, so every batch has the same shape.
"""

from __future__ import annotations

import numpy as np


def _check(num_frames: int, clip_len: int, stride: int = 1) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1 or stride < 1:
        raise ValueError(f"clip_len and stride must be >= 1, got clip_len={clip_len} stride={stride}")


def train_clip_indices(num_frames: int, clip_len: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """``clip_len`` indices ``start + k * stride`` from a uniformly random start. Returns ``[clip_len]``.

    A clip spans ``(clip_len - 1) * stride + 1`` frames. Shorter videos:

    - ``clip_len <= num_frames < span``: the stride shrinks to the largest that fits (random start
      in whatever slack is left), so the clip still shows continuous motion over the whole video
      instead of freezing on the last frame for most of its length;
    - ``num_frames < clip_len``: every frame is used and frames are repeated evenly
      (``floor(k * num_frames / clip_len)``), i.e. slow motion.
    """
    _check(num_frames, clip_len, stride)
    if clip_len == 1:
        return np.array([rng.integers(0, num_frames)], dtype=np.int64)
    if num_frames < clip_len:
        return (np.arange(clip_len, dtype=np.int64) * num_frames) // clip_len
    stride = min(stride, (num_frames - 1) // (clip_len - 1))  # >= 1 because num_frames >= clip_len
    span = (clip_len - 1) * stride + 1
    start = int(rng.integers(0, num_frames - span + 1))
    return start + np.arange(clip_len, dtype=np.int64) * stride


def official_clip_indices(num_frames: int, clip_len: int, stride: int,
                          rng: np.random.Generator | None) -> np.ndarray:
    """One clip as VideoMAE V2 fine-tuning samples it: ``VideoClsDataset.load_video`` with one segment
    (OpenGVLab/VideoMAEv2 ``dataset/datasets.py``), training mode with ``rng``, validation mode without.

    The clip covers a window of ``clip_len * stride`` frames, sampled by ``linspace`` (so the step is
    ``clip_len * stride / (clip_len - 1)``, a little over ``stride``), the window's end drawn uniformly
    in ``[clip_len * stride, num_frames)`` (training) or the window **centred** in the video
    (validation: end ``(clip_len * stride + num_frames) // 2``). A video of at most ``clip_len * stride``
    frames: ``num_frames // stride`` frames spread over the whole video, then the **last frame repeated**
    up to ``clip_len`` (the same in both modes). Returns ``[clip_len]`` int64.
    """
    _check(num_frames, clip_len, stride)
    span = clip_len * stride
    if num_frames <= span:
        head = np.linspace(0, num_frames, num=num_frames // stride)
        index = np.concatenate([head, np.full(clip_len - num_frames // stride, float(num_frames))])
        return np.clip(index, 0, num_frames - 1).astype(np.int64)
    end = (span + num_frames) // 2 if rng is None else int(rng.integers(span, num_frames))
    start = end - span
    return np.clip(np.linspace(start, end, num=clip_len), start, end - 1).astype(np.int64)


def test_clip_indices(num_frames: int, clip_len: int, stride: int, num_clips: int) -> list[np.ndarray]:
    """``num_clips`` evenly spaced clips, VideoMAE's test protocol. Returns a list of ``[clip_len]``.

    As in VideoMAE's ``VideoClsDataset`` (test mode): take every ``stride``-th frame of the whole
    video, pad that list with its last frame up to ``clip_len``, then cut ``num_clips`` windows of
    ``clip_len`` at starts ``int(i * (len - clip_len) / (num_clips - 1))``.

    ``num_clips == 1`` (which the official test mode cannot do: it divides by ``num_clips - 1``) is
    the official *validation* clip, the window at the centre of the video
    (:func:`official_clip_indices` without rng).
    """
    _check(num_frames, clip_len, stride)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    if num_clips == 1:
        return [official_clip_indices(num_frames, clip_len, stride, None)]
    strided = np.arange(0, num_frames, stride, dtype=np.int64)
    if len(strided) < clip_len:
        strided = np.concatenate([strided, np.full(clip_len - len(strided), strided[-1], dtype=np.int64)])
    step = (len(strided) - clip_len) / (num_clips - 1)
    return [strided[int(i * step) : int(i * step) + clip_len].copy() for i in range(num_clips)]


def segment_indices(num_frames: int, clip_len: int, rng: np.random.Generator | None) -> np.ndarray:
    """TSN-style sampling (VideoMAE on SSv2): one frame per each of ``clip_len`` equal segments.

    Segment ``i`` covers ``[round(i * s), round((i + 1) * s)]`` with ``s = (num_frames - 1) /
    clip_len`` (bounds inclusive, as VideoMAE's ``_get_seq_frames``): a uniformly random frame of
    it when ``rng`` is given (training), its middle frame when ``rng`` is None (test).
    Returns ``[clip_len]``.
    """
    _check(num_frames, clip_len)
    seg = (num_frames - 1) / clip_len
    # np.round rounds halves to even, Python's round() (VideoMAE) too: same segment bounds.
    starts = np.round(seg * np.arange(clip_len)).astype(np.int64)
    ends = np.round(seg * np.arange(1, clip_len + 1)).astype(np.int64)
    if rng is None:
        return (starts + ends) // 2
    return rng.integers(starts, ends + 1).astype(np.int64)


# The name starts with "test_": stop pytest from collecting it when a test module imports it.
test_clip_indices.__test__ = False  # type: ignore[attr-defined]
