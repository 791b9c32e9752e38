"""Probe / decode / transcode on small generated videos, including broken inputs."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import platform
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import VideoError
from pipeline.video import decode as decode_mod
from pipeline.video.decode import decode_frames, fallback_counts, open_video
from pipeline.video.encode import H264Writer, encode_h264
from pipeline.video.probe import probe
from pipeline.video.transcode import transcode

try:  # tests/unit on sys.path (rootdir-relative import mode) or the repo root (python -m pytest)
    from video_fixtures import FPS, T, VideoFiles, moving_frames, psnr, video_files  # noqa: F401
except ImportError:
    from tests.unit.video_fixtures import FPS, T, VideoFiles, moving_frames, psnr, video_files  # noqa: F401

try:
    import decord  # noqa: F401

    HAS_DECORD = True
except ImportError:
    HAS_DECORD = False
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord has no wheel for this platform")
REPO = Path(__file__).resolve().parents[2]

# Bounds measured on these fixtures (64x48, saturated moving square; chroma subsampling dominates):
# encode_h264 at crf 23 vs the RGB source ~29.4 dB; one more generation (transcode) vs the
# decoded source ~33 dB (h264), ~30.5 dB (mjpeg), ~29 dB (ffv1 63x47).
PSNR_ENCODE_DB = 27.0
PSNR_TRANSCODE_DB = 27.0


# ------------------------------------------------------------------ probe


def test_probe_h264_path_and_bytes(video_files: VideoFiles) -> None:
    info = probe(video_files.h264)
    assert (info.num_frames, info.fps, info.width, info.height) == (T, FPS, 64, 48)
    assert (info.codec, info.pix_fmt, info.frames_from, info.rotation) == ("h264", "yuv420p", "metadata", 0)
    assert info.duration == pytest.approx(T / FPS)
    assert info.size_bytes == len(video_files.h264_bytes)
    assert probe(video_files.h264_bytes) == info
    assert set(info.to_dict()) >= {"num_frames", "fps", "duration", "width", "height", "codec", "pix_fmt", "bit_rate"}


def test_probe_other_containers(video_files: VideoFiles) -> None:
    avi = probe(video_files.mjpeg_avi)
    assert (avi.codec, avi.num_frames, avi.width) == ("mjpeg", 30, 64)
    mkv = probe(video_files.ffv1_odd_mkv)  # Matroska states no frame count: counted by demuxing
    assert (mkv.codec, mkv.num_frames, mkv.width, mkv.height, mkv.frames_from) == ("ffv1", 24, 63, 47, "demux")
    assert probe(video_files.rotated).rotation == 90


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [
        ("missing", {}, "missing file"),
        ("zero", {}, "zero bytes"),
        ("random", {}, "not a video: "),
        ("text", {}, "not a video: "),
        ("truncated", {}, "truncated or corrupt stream: "),
        ("audio", {}, "no video stream"),
        ("short", {"min_frames": 8}, "too short: 3 frames < 8 required"),
        ("h264", {"max_pixels": 1000}, "absurd size: 64x48 exceeds limit"),
        ("h264", {"max_side": 50}, "absurd size: 64x48 exceeds limit"),
        ("h264", {"max_frames": 10}, "absurd size: 40 frames exceeds limit 10"),
        ("ffv1_odd_mkv", {"max_frames": 10}, "absurd size: more than 10 frames exceeds limit"),
        ("front_moov_cut", {"count": "demux"}, "truncated or corrupt stream: 16 of 40 frames present"),
    ],
)
def test_probe_rejects_with_reason(video_files: VideoFiles, name: str, kwargs: dict, reason: str) -> None:
    with pytest.raises(VideoError) as err:
        probe(getattr(video_files, name), **kwargs)
    message = str(err.value)
    assert message.startswith(reason), message
    assert "\n" not in message and len(message) < 200


def test_probe_rejects_empty_bytes() -> None:
    with pytest.raises(VideoError, match="^zero bytes$"):
        probe(b"")


# ------------------------------------------------------------------ decode


@pytest.mark.parametrize("backend", ["pyav", pytest.param("decord", marks=needs_decord), "auto"])
def test_decode_any_order_with_repeats(video_files: VideoFiles, backend: str) -> None:
    full = decode_frames(video_files.h264, np.arange(T), "pyav")
    assert full.shape == (T, 48, 64, 3) and full.dtype == np.uint8
    assert psnr(full, video_files.frames) > PSNR_ENCODE_DB
    idx = np.array([39, 3, 3, 20, 0, 17, 39, 8, 9, 31, 2])  # unsorted, repeats, across keyframes
    for source in (video_files.h264, video_files.h264_bytes):
        np.testing.assert_array_equal(decode_frames(source, idx, backend), full[idx])


@needs_decord
def test_decord_frames_outlive_their_reader(video_files: VideoFiles) -> None:
    """decord's frames are taken over without a copy (DLPack): they stay valid once the reader is
    closed and collected, while later reads allocate (and could reuse) buffers of the same size."""
    idx = np.arange(0, T, 3)
    want = decode_frames(video_files.h264, idx, "pyav")
    with open_video(video_files.h264_bytes, "decord") as reader:
        kept = reader.get(idx)
    del reader
    gc.collect()
    for _ in range(3):
        decode_frames(video_files.h264_bytes, idx[::-1], "decord")
    np.testing.assert_array_equal(kept, want)


def test_decoded_frames_are_the_right_ones(video_files: VideoFiles) -> None:
    """Each decoded frame is closest to its own source frame (an off-by-one would show)."""
    dec = decode_frames(video_files.h264, [5, 6, 30], "pyav")
    for got, i in zip(dec, [5, 6, 30]):
        scores = [psnr(got, video_files.frames[j]) for j in (i - 1, i, i + 1)]
        assert int(np.argmax(scores)) == 1, scores


@pytest.mark.skipif(platform.machine() != "x86_64", reason="decord2 is a dependency on x86-64 only")
def test_installed_decord_is_the_adopted_decord2() -> None:
    """The ``decord`` module is decord2 at the version requirements/constraints.txt pins, and no
    decord 0.6.0 (same module name) lingers in the environment."""
    import decord

    pinned = re.search(r"^decord2==(\S+)$", (REPO / "requirements/constraints.txt").read_text(), re.M)
    assert pinned, "requirements/constraints.txt pins no decord2"
    assert decord.__version__ == metadata.version("decord2") == pinned.group(1)
    assert metadata.packages_distributions()["decord"] == ["decord2"]
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("decord")


@needs_decord
@pytest.mark.parametrize("name", ["h264", "mjpeg_avi", "ffv1_odd_mkv", "fps60"])
def test_decord_and_pyav_agree(video_files: VideoFiles, name: str) -> None:
    """Same FFmpeg decoder and RGB conversion underneath: bit-identical here (bound: 0), every
    frame, from the path and from the bytes (as the loader reads shard samples)."""
    path = getattr(video_files, name)
    n = probe(path).num_frames
    a = decode_frames(path, np.arange(n), "pyav")
    for source in (path, path.read_bytes()):
        b = decode_frames(source, np.arange(n), "decord")
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() == 0


@needs_decord
def test_decord_still_fails_on_rotated_streams(video_files: VideoFiles) -> None:
    """Why ``auto`` sends rotated streams to PyAV: decord2 3.4.0, like decord 0.6.0, cannot decode
    them. If this fails, decord learned to: check its frames and revisit the rule in open_video."""
    with pytest.raises(VideoError, match="from_size == to_size"):
        decode_frames(video_files.rotated, [1], "decord")


def test_auto_on_a_file_cut_after_a_front_moov(video_files: VideoFiles) -> None:
    """decord2 opens it and states the 16 frames present where the header promises 40 (decord
    0.6.0 refused to open it): either way ``auto`` serves it with PyAV, which finds the same 16."""
    reader = open_video(video_files.front_moov_cut, "auto")
    assert (reader.backend, reader.num_frames) == ("pyav", 16)
    if HAS_DECORD:
        assert reader.fallback_reason == "frame count mismatch: decord 16 vs pyav 40"
    np.testing.assert_array_equal(reader.get([0, 12]), decode_frames(video_files.front_moov_cut, [0, 12], "pyav"))


def test_reader_reuse_and_other_containers(video_files: VideoFiles) -> None:
    with open_video(video_files.mjpeg_avi, "auto") as reader:
        assert reader.num_frames == 30 and reader.fps == pytest.approx(FPS)
        first = reader.get([0, 29, 15])
        np.testing.assert_array_equal(reader.get([15]), first[2:])
        assert psnr(first, video_files.frames[[0, 29, 15]]) > 25.0  # MJPEG at its default quality
    odd = decode_frames(video_files.ffv1_odd_mkv, [23, 0], "pyav")
    assert odd.shape == (2, 47, 63, 3)
    assert psnr(odd, moving_frames(24, 47, 63, seed=2)[[23, 0]]) > 35.0  # lossless codec, 4:4:4


@needs_decord
def test_auto_uses_decord_when_it_agrees(video_files: VideoFiles) -> None:
    reader = open_video(video_files.h264, "auto")
    assert (reader.backend, reader.fallback_reason) == ("decord", None)


def test_auto_falls_back_on_count_mismatch(video_files: VideoFiles) -> None:
    before = fallback_counts()
    wrong = dataclasses.replace(probe(video_files.h264), num_frames=T - 1)
    reader = open_video(video_files.h264, "auto", info=wrong)
    assert reader.backend == "pyav"
    if HAS_DECORD:
        assert reader.fallback_reason == f"frame count mismatch: decord {T} vs pyav {T - 1}"
        assert fallback_counts()["frame count mismatch"] == before.get("frame count mismatch", 0) + 1
    else:
        assert reader.fallback_reason.startswith("decord not installed")


def test_auto_falls_back_on_rotation_and_on_decord_errors(video_files: VideoFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = open_video(video_files.rotated, "auto")  # decord (0.6.0, decord2 3.4.0) fails on rotated streams
    assert reader.backend == "pyav" and reader.fallback_reason == "rotated video: 90 degrees"
    assert reader.get([1]).shape == (1, 48, 64, 3)  # stored orientation, not rotated

    class Broken:
        name, num_frames, fps = "decord", T, float(FPS)

        def __init__(self, *args: object) -> None:
            pass

        def get_sorted(self, targets: np.ndarray) -> list:
            raise RuntimeError("simulated decord failure")

        def close(self) -> None:
            pass

    monkeypatch.setattr(decode_mod, "_DecordSource", Broken)
    reader = open_video(video_files.h264, "auto")
    assert reader.backend == "decord"
    frames = reader.get([4, 2])
    assert reader.backend == "pyav" and reader.fallback_reason == "decord decode failed: simulated decord failure"
    np.testing.assert_array_equal(frames, decode_frames(video_files.h264, [4, 2], "pyav"))


@pytest.mark.parametrize("name,reason", [("missing", "missing file"), ("truncated", "truncated or corrupt"), ("text", "not a video")])
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_decode_bad_inputs_raise_video_error(video_files: VideoFiles, name: str, reason: str, backend: str) -> None:
    with pytest.raises(VideoError, match=f"^{reason}"):
        decode_frames(getattr(video_files, name), [0], backend)


def test_decode_front_moov_cut_fails_at_the_missing_frames(video_files: VideoFiles) -> None:
    with open_video(video_files.front_moov_cut, "pyav") as reader:
        assert reader.num_frames == 16  # what the demuxer finds, not what the header promised
        assert reader.get([0, 12]).shape == (2, 48, 64, 3)
        with pytest.raises(VideoError, match="^undecodable frames at index 13$"):  # B-frames lost their refs
            reader.get([15])
        with pytest.raises(IndexError):
            reader.get([20])


# ------------------------------------------------------------------ transcode


def _all_frames(data: bytes) -> np.ndarray:
    return decode_frames(data, np.arange(probe(data).num_frames), "pyav")


def test_transcode_keeps_small_video_and_is_deterministic(video_files: VideoFiles) -> None:
    data, info = transcode(video_files.h264)
    assert (info.width, info.height, info.num_frames, info.fps, info.codec) == (64, 48, T, FPS, "h264")
    assert info == probe(data)
    # reruns are byte-identical, also after other decodes/encodes in between (x264 mbtree, see transcode.py)
    decode_frames(video_files.mjpeg_avi, [3], "pyav")
    again, _ = transcode(video_files.h264)
    assert hashlib.sha256(again).hexdigest() == hashlib.sha256(data).hexdigest()
    source = decode_frames(video_files.h264, np.arange(T), "pyav")
    assert psnr(_all_frames(data), source) > PSNR_TRANSCODE_DB


def test_writer_is_deterministic_between_decodes(video_files: VideoFiles) -> None:
    frames = decode_frames(video_files.h264, np.arange(T), "pyav")
    outputs = set()
    for i in range(3):
        decode_frames([video_files.mjpeg_avi, video_files.ffv1_odd_mkv, video_files.h264][i], [0, 7], "pyav")
        writer = H264Writer(64, 48, FPS)
        for f in frames:
            writer.write(f)
        outputs.add(writer.finish())
    assert len(outputs) == 1


def test_encode_h264_matches_writer() -> None:
    frames = moving_frames()
    writer = H264Writer(64, 48, FPS)
    for f in frames:
        writer.write(f)
    assert encode_h264(frames, FPS) == writer.finish()


@pytest.mark.parametrize(
    "name,max_short_side,size",
    [("h264", 32, (42, 32)), ("h264", 1000, (64, 48)), ("ffv1_odd_mkv", 320, (62, 46)), ("ffv1_odd_mkv", 21, (28, 20)),
     ("mjpeg_avi", 320, (64, 48)), ("rotated", 320, (48, 64)), ("rotated", 32, (32, 42))],
)
def test_transcode_sizes(video_files: VideoFiles, name: str, max_short_side: int, size: tuple[int, int]) -> None:
    data, info = transcode(getattr(video_files, name), max_short_side=max_short_side)
    assert (info.width, info.height) == size
    assert info.width % 2 == 0 and info.height % 2 == 0 and min(size) <= max_short_side
    assert info.codec == "h264" and info.rotation == 0


def test_transcode_quality_after_downscale_and_rotation(video_files: VideoFiles) -> None:
    import torch
    import torch.nn.functional as F

    data, _ = transcode(video_files.h264, max_short_side=32)
    src = torch.from_numpy(decode_frames(video_files.h264, np.arange(T), "pyav")).permute(0, 3, 1, 2).float()
    ref = F.interpolate(src, size=(32, 42), mode="bilinear", antialias=True).round().clamp(0, 255)
    assert psnr(_all_frames(data), ref.permute(0, 2, 3, 1).byte().numpy()) > 24.0
    data, _ = transcode(video_files.rotated)
    upright = np.rot90(decode_frames(video_files.rotated, np.arange(T), "pyav"), k=1, axes=(1, 2))
    assert psnr(_all_frames(data), upright) > PSNR_TRANSCODE_DB


@pytest.mark.parametrize("cap,frames,expected_fps", [(30, 20, 30.0), (25, 17, 25.0), (100, 40, 60.0)])
def test_transcode_fps_cap_drops_frames_uniformly(video_files: VideoFiles, cap: float, frames: int, expected_fps: float) -> None:
    data, info = transcode(video_files.fps60, fps_cap=cap)
    assert (info.num_frames, info.fps) == (frames, expected_fps)
    if cap == 30:  # every other frame: output j is source 2j
        source = decode_frames(video_files.fps60, np.arange(0, 40, 2), "pyav")
        assert psnr(_all_frames(data), source) > PSNR_TRANSCODE_DB


def test_transcode_clip_range(video_files: VideoFiles) -> None:
    data, info = transcode(video_files.h264, start_sec=0.4, end_sec=1.2)  # frames 10..29
    assert info.num_frames == 20
    out = _all_frames(data)
    source = decode_frames(video_files.h264, np.arange(T), "pyav")
    assert int(np.argmax([psnr(out[0], source[j]) for j in (9, 10, 11)])) == 1
    assert int(np.argmax([psnr(out[-1], source[j]) for j in (28, 29, 30)])) == 1
    with pytest.raises(VideoError, match="^too short: 0 frames in range"):
        transcode(video_files.h264, start_sec=5.0)


@pytest.mark.parametrize(
    "name,kwargs,reason",
    [("missing", {}, "missing file"), ("zero", {}, "zero bytes"), ("random", {}, "not a video"), ("text", {}, "not a video"),
     ("truncated", {}, "truncated or corrupt stream"), ("audio", {}, "no video stream"),
     ("front_moov_cut", {}, "truncated or corrupt stream: decoded 13 of 40 frames"),
     ("short", {"min_frames": 8}, "too short: 3 frames < 8 required"), ("h264", {"max_pixels": 1000}, "absurd size")],
)
def test_transcode_rejects_with_reason(video_files: VideoFiles, name: str, kwargs: dict, reason: str) -> None:
    with pytest.raises(VideoError, match=f"^{reason}"):
        transcode(getattr(video_files, name), **kwargs)
