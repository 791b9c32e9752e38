"""Small generated test videos (and broken ones) shared by the video tests.

Import the fixtures into a test module (``from ... import video_files  # noqa: F401``). All videos
are tiny (64x48, tens of frames) so the whole video test set runs in seconds on 2 cores.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.video.encode import encode_h264

W, H, T, FPS = 64, 48, 40, 25


def moving_frames(t: int = T, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 ``[t, h, w, 3]``: a smooth colour gradient with a bright square moving across it.

    Smooth content plus one sharp moving edge: compresses well (high PSNR at crf 23) and every
    frame differs from its neighbours, so a wrong frame index is visible.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        for c in range(3):
            out[i, :, :, c] = 128 + 80 * np.sin(xx / w * 2 * np.pi + yy / h * np.pi + phase[c] + 0.15 * i)
        x0, y0 = (3 * i) % max(1, w - 12), (2 * i) % max(1, h - 12)
        out[i, y0 : y0 + 12, x0 : x0 + 12] = (250, 240, 30)
    return out


def write_with_pyav(path: Path, frames: np.ndarray, fps: int, codec: str, pix_fmt: str, container: str | None = None) -> Path:
    """Write frames with any PyAV encoder (mjpeg/ffv1/...): the non-H.264 inputs."""
    with av.open(str(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_h264_pyav(path: Path, frames: np.ndarray, fps: int, *, rotation: int = 0, faststart: bool = False) -> Path:
    """H.264 MP4 written directly with PyAV: with a display rotation and/or the index (moov) in front."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """A WAV file: a valid media file with no video stream."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def mjpeg_claiming(path: Path, side: int) -> Path:
    """A real 8-frame MJPEG AVI whose every header (AVI + JPEG) claims ``side x side`` pixels."""
    data = bytearray(write_with_pyav(path.with_suffix(".src.avi"), moving_frames(8), 8, "mjpeg", "yuvj420p").read_bytes())
    path.with_suffix(".src.avi").unlink()
    at = data.find(b"\xff\xc0")
    while at >= 0:  # JPEG start-of-frame: height, width
        struct.pack_into(">HH", data, at + 5, side, side)
        at = data.find(b"\xff\xc0", at + 2)
    struct.pack_into("<II", data, data.find(b"avih") + 8 + 32, side, side)
    struct.pack_into("<ii", data, data.find(b"strf") + 8 + 4, side, side)
    path.write_bytes(bytes(data))
    return path


@dataclass(frozen=True)
class VideoFiles:
    frames: np.ndarray = field(repr=False)  # the source frames of h264 / mjpeg, [T, H, W, 3]
    h264: Path  # 64x48, 40 frames, 25 fps, keyframe every 10 frames
    h264_bytes: bytes = field(repr=False)
    mjpeg_avi: Path  # same frames, MJPEG in AVI
    ffv1_odd_mkv: Path  # 63x47 lossless FFV1 in Matroska (no frame count in the header)
    fps60: Path  # 64x48, 40 frames at 60 fps
    short: Path  # 3 frames
    missing: Path
    zero: Path
    random: Path
    truncated: Path  # first half of h264
    text: Path  # a text file named .mp4
    audio: Path  # WAV, no video stream
    rotated: Path  # h264 frames stored as-is with a display rotation of 90 degrees counter-clockwise
    front_moov_cut: Path  # moov at the front, media data cut at 60%: opens, but frames are missing


def make_video_files(d: Path) -> VideoFiles:
    """Write every fixture video into the folder ``d`` (also used by benchmarks/bench_decoders.py)."""
    d.mkdir(parents=True, exist_ok=True)
    frames = moving_frames()
    h264_bytes = encode_h264(frames, FPS, gop=10)
    (d / "h264.mp4").write_bytes(h264_bytes)
    (d / "fps60.mp4").write_bytes(encode_h264(moving_frames(seed=1), 60))
    (d / "short.mp4").write_bytes(encode_h264(frames[:3], FPS))
    (d / "zero.mp4").write_bytes(b"")
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (d / "truncated.mp4").write_bytes(h264_bytes[: len(h264_bytes) // 2])
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    odd = moving_frames(24, 47, 63, seed=2)
    front = write_h264_pyav(d / "front.mp4", frames, FPS, faststart=True).read_bytes()
    (d / "front_cut.mp4").write_bytes(front[: int(len(front) * 0.6)])
    return VideoFiles(
        frames=frames,
        h264=d / "h264.mp4",
        h264_bytes=h264_bytes,
        mjpeg_avi=write_with_pyav(d / "mjpeg.avi", frames[:30], FPS, "mjpeg", "yuvj420p"),
        ffv1_odd_mkv=write_with_pyav(d / "ffv1_odd.mkv", odd, FPS, "ffv1", "yuv444p"),
        fps60=d / "fps60.mp4",
        short=d / "short.mp4",
        missing=d / "does-not-exist.mp4",
        zero=d / "zero.mp4",
        random=d / "random.mp4",
        truncated=d / "truncated.mp4",
        text=d / "text.mp4",
        audio=write_audio_only(d / "audio.wav"),
        rotated=write_h264_pyav(d / "rotated.mp4", frames, FPS, rotation=90),
        front_moov_cut=d / "front_cut.mp4",
    )


@pytest.fixture(scope="session")
def video_files(tmp_path_factory: pytest.TempPathFactory) -> VideoFiles:
    return make_video_files(tmp_path_factory.mktemp("videos"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
