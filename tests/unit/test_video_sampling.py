"""Clip samplers: exact lengths, bounds, monotonicity, short videos, VideoMAE parity."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.video.sampling import official_clip_indices, segment_indices, test_clip_indices, train_clip_indices

LENGTHS = [1, 2, 5, 15, 16, 17, 40, 61, 64, 65, 300]


def _valid(idx: np.ndarray, num_frames: int, clip_len: int) -> None:
    assert idx.shape == (clip_len,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < num_frames
    assert np.all(np.diff(idx) >= 0), idx


@pytest.mark.parametrize("num_frames", LENGTHS)
@pytest.mark.parametrize("clip_len,stride", [(16, 4), (16, 2), (8, 1), (1, 3)])
def test_train_indices_always_valid(num_frames: int, clip_len: int, stride: int) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        _valid(train_clip_indices(num_frames, clip_len, stride, rng), num_frames, clip_len)


def test_train_indices_long_video_keeps_stride_and_covers_all_starts() -> None:
    rng = np.random.default_rng(0)
    num_frames, clip_len, stride = 100, 16, 4  # span 61 -> starts 0..39
    starts = set()
    for _ in range(2000):
        idx = train_clip_indices(num_frames, clip_len, stride, rng)
        assert np.all(np.diff(idx) == stride)
        starts.add(int(idx[0]))
    assert starts == set(range(0, num_frames - 61 + 1))


def test_train_indices_exact_fit_is_deterministic() -> None:
    idx = train_clip_indices(61, 16, 4, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, np.arange(0, 61, 4))


def test_train_indices_short_video_shrinks_stride_then_repeats() -> None:
    rng = np.random.default_rng(0)
    idx = train_clip_indices(40, 16, 4, rng)  # span 61 > 40: stride becomes 39 // 15 = 2
    assert np.all(np.diff(idx) == 2)
    idx = train_clip_indices(5, 16, 4, rng)  # fewer frames than clip_len: even repeats
    np.testing.assert_array_equal(idx, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
    assert set(idx.tolist()) == set(range(5))
    np.testing.assert_array_equal(train_clip_indices(1, 16, 4, rng), np.zeros(16, np.int64))


def test_train_indices_seeded() -> None:
    a = train_clip_indices(300, 16, 4, np.random.default_rng(7))
    b = train_clip_indices(300, 16, 4, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def _videomae_test_clips(num_frames: int, clip_len: int, stride: int, num_clips: int) -> list[list[int]]:
    """VideoMAE VideoClsDataset test mode, transcribed (all_index + temporal chunks)."""
    all_index = list(range(0, num_frames, stride))
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    step = max(1.0 * (len(all_index) - clip_len) / (num_clips - 1), 0) if num_clips > 1 else 0
    return [all_index[int(i * step) : int(i * step) + clip_len] for i in range(num_clips)]


@pytest.mark.parametrize("num_frames", LENGTHS)
@pytest.mark.parametrize("num_clips", [2, 5])  # one clip is the validation window (below): official test mode divides by 0
def test_test_clips_match_videomae_and_are_valid(num_frames: int, num_clips: int) -> None:
    clips = test_clip_indices(num_frames, 16, 4, num_clips)
    assert len(clips) == num_clips
    for clip, ref in zip(clips, _videomae_test_clips(num_frames, 16, 4, num_clips)):
        _valid(clip, num_frames, 16)
        assert clip.tolist() == ref


def test_test_clips_evenly_spaced_span_the_video() -> None:
    clips = test_clip_indices(300, 16, 2, 5)
    assert clips[0][0] == 0 and clips[-1][-1] == 298  # first starts at 0, last ends at the last strided frame
    starts = [int(c[0]) for c in clips]
    assert np.ptp(np.diff(starts)) <= 2  # even spacing up to integer rounding


def _videomae_segments(video_size: int, clip_len: int, rand: random.Random | None) -> list[int]:
    """VideoMAE's SSv2 ``_get_seq_frames``, transcribed."""
    seg_size = float(video_size - 1) / clip_len
    seq = []
    for i in range(clip_len):
        start, end = int(np.round(seg_size * i)), int(np.round(seg_size * (i + 1)))
        seq.append(rand.randint(start, end) if rand else (start + end) // 2)
    return seq


@pytest.mark.parametrize("num_frames", LENGTHS)
def test_segment_indices(num_frames: int) -> None:
    assert segment_indices(num_frames, 16, None).tolist() == _videomae_segments(num_frames, 16, None)
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_indices(num_frames, 16, rng)
        _valid(idx, num_frames, 16)
        seg = (num_frames - 1) / 16
        assert np.all(idx >= np.round(seg * np.arange(16))) and np.all(idx <= np.round(seg * np.arange(1, 17)))


def test_segment_indices_random_hits_segment_bounds() -> None:
    rng = np.random.default_rng(0)
    seen = np.stack([segment_indices(161, 16, rng) for _ in range(500)])  # segments of 10 frames
    assert seen[:, 0].min() == 0 and seen[:, 0].max() == 10
    assert seen[:, -1].min() == 150 and seen[:, -1].max() == 160


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        train_clip_indices(0, 16, 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        test_clip_indices(10, 16, 0, 2)
    with pytest.raises(ValueError):
        test_clip_indices(10, 16, 1, 0)


def _official_load_video(length: int, clip_len: int, frame_sample_rate: int, end_idx: int | None) -> list[int]:
    """OpenGVLab/VideoMAEv2 ``dataset/datasets.py`` ``VideoClsDataset.load_video`` (train / validation mode,
    ``num_segment=1`` as ``dataset/build.py`` builds Kinetics), transcribed. ``end_idx`` None is validation
    mode (``(converted_len + seg_len) // 2``); training draws it with ``np.random.randint(converted_len, seg_len)``."""
    converted_len = int(clip_len * frame_sample_rate)
    seg_len = length // 1
    if seg_len <= converted_len:
        index = np.linspace(0, seg_len, num=seg_len // frame_sample_rate)
        index = np.concatenate((index, np.ones(clip_len - seg_len // frame_sample_rate) * seg_len))
        index = np.clip(index, 0, seg_len - 1).astype(np.int64)
    else:
        if end_idx is None:
            end_idx = (converted_len + seg_len) // 2
        str_idx = end_idx - converted_len
        index = np.linspace(str_idx, end_idx, num=clip_len)
        index = np.clip(index, str_idx, end_idx - 1).astype(np.int64)
    return index.tolist()


@pytest.mark.parametrize("num_frames", LENGTHS + [63, 66, 250])
@pytest.mark.parametrize("clip_len,stride", [(16, 4), (16, 2), (8, 4)])
def test_validation_clip_is_official_centre_window(num_frames: int, clip_len: int, stride: int) -> None:
    ours = official_clip_indices(num_frames, clip_len, stride, None)
    _valid(ours, num_frames, clip_len)
    assert ours.tolist() == _official_load_video(num_frames, clip_len, stride, None)
    # one validation clip per video (finetune.val_num_clips = 1) is this window
    assert test_clip_indices(num_frames, clip_len, stride, 1)[0].tolist() == ours.tolist()


def test_validation_window_is_centred() -> None:
    idx = official_clip_indices(300, 16, 4, None)  # window of 64 frames: end (64 + 300) // 2 = 182
    assert idx[0] == 118 and idx[-1] == 181
    assert abs((idx[0] + idx[-1]) / 2 - 149.5) <= 1


def test_short_video_repeats_last_frame_as_official() -> None:
    # 40 frames < 16 x 4: 40 // 4 = 10 frames over the whole video, then the last frame 6 more times
    idx = official_clip_indices(40, 16, 4, np.random.default_rng(0))
    assert idx.tolist() == [0, 4, 8, 13, 17, 22, 26, 31, 35, 39] + [39] * 6
    assert official_clip_indices(40, 16, 4, None).tolist() == idx.tolist()  # no randomness in a short video
    assert official_clip_indices(3, 16, 4, None).tolist() == [2] * 16  # fewer frames than the stride: the last


@pytest.mark.parametrize("num_frames", [65, 100, 300])
def test_training_clip_is_an_official_window_and_covers_all_ends(num_frames: int) -> None:
    rng = np.random.default_rng(0)
    windows = {end: _official_load_video(num_frames, 16, 4, end) for end in range(64, num_frames)}
    seen = set()
    for _ in range(30 * len(windows)):
        idx = official_clip_indices(num_frames, 16, 4, rng)
        ends = [end for end, w in windows.items() if w == idx.tolist()]
        assert ends, idx
        seen.add(ends[0])
    assert seen == set(windows)  # end uniform in [converted_len, num_frames) as np.random.randint
