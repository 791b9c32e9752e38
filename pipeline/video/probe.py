"""Probe a video (frames, fps, duration, size, codec) with PyAV, and classify why one is bad.

Every failure is a :class:`~pipeline.core.errors.VideoError` whose one-line message is the quarantine
reason: ``missing file``, ``zero bytes``, ``unreadable: ...``, ``not a video: ...``,
``no video stream``, ``truncated or corrupt stream: ...``, ``too short: 3 frames < 8 required``,
``absurd size: ...``. Probing reads the headers and decodes the first frame, plus a packet demux
(no decode) when the container states no frame count (mkv/webm) or ``count="demux"`` asks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av

from pipeline.core.errors import VideoError

VideoSource = str | os.PathLike | bytes | bytearray | memoryview

# Decompression-bomb guards. 8K is 33 Mpx; H.264 itself tops out at 8192 x 4320 per level 6.2.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 16_384
DEFAULT_MAX_FRAMES = 1_000_000  # ~9 hours at 30 fps

# Leading bytes of containers we know. A file that starts like one but cannot be opened is
# "truncated or corrupt"; anything else that cannot be opened is "not a video".
_MAGIC: list[tuple[int, bytes]] = [
    (4, b"ftyp"), (4, b"moov"), (4, b"mdat"), (4, b"free"), (4, b"wide"),  # mp4 / mov
    (0, b"RIFF"), (0, b"\x1a\x45\xdf\xa3"), (0, b"FLV"), (0, b"OggS"),  # avi, mkv/webm, flv, ogg
    (0, b"\x00\x00\x01\xba"), (0, b"\x30\x26\xb2\x75"),  # mpeg-ps, asf/wmv
]


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about the first video stream. Sizes are as stored (before rotation)."""

    num_frames: int
    fps: float
    duration: float  # seconds
    width: int
    height: int
    codec: str
    pix_fmt: str | None = None
    bit_rate: int | None = None  # bits/s, when the container or stream states it
    size_bytes: int | None = None  # size of the file / bytes probed
    rotation: int = 0  # display rotation in degrees counter-clockwise (0, 90, 180, 270); 0 if not decoded
    frames_from: Literal["metadata", "demux"] = "metadata"  # where num_frames came from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def error_detail(exc: BaseException) -> str:
    """A short one-line description of an FFmpeg/OS error (no errno prefix, no file name)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:120]


def _head(source: VideoSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:16])
    with open(source, "rb") as f:
        return f.read(16)


def looks_like_container(head: bytes) -> bool:
    """True when ``head`` (the first bytes) starts like a known video container."""
    return any(head[off : off + len(m)] == m for off, m in _MAGIC)


def _check_present(source: VideoSource) -> int:
    """Byte size of ``source``; VideoError for a missing, empty or unreadable one."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = len(source)
    else:
        path = Path(source)
        if not path.exists():
            raise VideoError("missing file")
        if not path.is_file():
            raise VideoError("unreadable: not a regular file")
        size = path.stat().st_size
    if size == 0:
        raise VideoError("zero bytes")
    return size


@contextlib.contextmanager
def open_container(source: VideoSource) -> Iterator[av.container.InputContainer]:
    """Open ``source`` (path or bytes) for reading; open failures become a classified VideoError."""
    _check_present(source)
    file: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    try:
        container = av.open(file, mode="r")
    except av.error.FFmpegError as exc:
        try:
            known = looks_like_container(_head(source))
        except OSError:
            known = False
        kind = "truncated or corrupt stream" if known else "not a video"
        raise VideoError(f"{kind}: {error_detail(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise VideoError(f"unreadable: {error_detail(exc)}") from exc
    try:
        yield container
    finally:
        container.close()


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream, or VideoError("no video stream")."""
    if not container.streams.video:
        raise VideoError("no video stream")
    return container.streams.video[0]


def first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame:
    """Decode the first frame (rewinding first): proves the stream decodes, carries the rotation."""
    try:
        container.seek(0, backward=True, any_frame=False)
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise VideoError(f"undecodable frames at index 0: {error_detail(exc)}") from exc
    raise VideoError("undecodable frames at index 0")


def frame_rotation(frame: av.VideoFrame) -> int:
    """Display rotation of ``frame`` in degrees counter-clockwise, normalised to 0/90/180/270.

    PyAV exposes the display matrix on frames only (not on streams), hence the first-frame decode.
    """
    return int(round(float(frame.rotation or 0) / 90.0)) * 90 % 360


def count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream, max_frames: int) -> int:
    """Frames in ``stream`` counted from its packets (demux only, no decode)."""
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size:  # the demuxer ends with an empty flush packet
                count += 1
                if count > max_frames:
                    raise VideoError(f"absurd size: more than {max_frames} frames exceeds limit")
    except av.error.FFmpegError as exc:
        raise VideoError(f"truncated or corrupt stream: demux failed after {count} packets: {error_detail(exc)}") from exc
    return count


def _rate(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _check_size(width: int, height: int, max_pixels: int, max_side: int) -> None:
    if width <= 0 or height <= 0:
        raise VideoError("truncated or corrupt stream: unknown frame size")
    if width > max_side or height > max_side or width * height > max_pixels:
        raise VideoError(f"absurd size: {width}x{height} exceeds limit")


def probe(
    source: VideoSource,
    backend: str = "pyav",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_frames: int = DEFAULT_MAX_FRAMES,
    min_frames: int = 1,
    count: Literal["auto", "demux"] = "auto",
    decode_first: bool = True,
) -> VideoInfo:
    """Probe the first video stream of ``source`` (a local path or the file's bytes).

    ``count="auto"`` takes the frame count from the container when it states one, else counts
    packets; ``"demux"`` always counts packets and reports a stream holding fewer than its header
    promises as truncated (finds files cut after a front ``moov``; costs one read of the file).
    ``decode_first`` decodes frame 0: reports a stream that does not decode, and reads the display
    rotation (phones store portrait video as rotated landscape).
    Raises VideoError (see the module docstring) for anything unusable.
    """
    if backend != "pyav":
        # decord exposes no codec/pix_fmt/bit rate and can hang on garbage: probing is PyAV's job.
        raise ValueError(f"probe backend must be 'pyav', got {backend!r}")
    size = _check_present(source)
    with open_container(source) as container:
        stream = video_stream(container)
        cc = stream.codec_context
        if cc is None:
            raise VideoError(f"not a video: no decoder for codec {stream.name!r}")
        _check_size(cc.width, cc.height, max_pixels, max_side)
        meta = int(stream.frames or 0)
        if meta > max_frames:
            raise VideoError(f"absurd size: {meta} frames exceeds limit {max_frames}")
        num_frames, frames_from = meta, "metadata"
        if meta <= 0 or count == "demux":
            num_frames, frames_from = count_packets(container, stream, max_frames), "demux"
            if 0 < meta and num_frames < meta:
                raise VideoError(f"truncated or corrupt stream: {num_frames} of {meta} frames present")
        rotation = frame_rotation(first_frame(container, stream)) if decode_first else 0
        fps = _rate(stream)
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0
        if duration <= 0 and container.duration:
            duration = container.duration / av.time_base
        if fps <= 0 and duration > 0:
            fps = num_frames / duration
        if fps <= 0:
            raise VideoError("truncated or corrupt stream: unknown frame rate")
        if duration <= 0:
            duration = num_frames / fps
        if num_frames < min_frames:
            raise VideoError(f"too short: {num_frames} frames < {min_frames} required")
        return VideoInfo(
            num_frames=num_frames,
            fps=fps,
            duration=duration,
            width=cc.width,
            height=cc.height,
            codec=cc.name,
            pix_fmt=cc.pix_fmt,
            bit_rate=(cc.bit_rate or container.bit_rate or None),
            size_bytes=size,
            rotation=rotation,
            frames_from=frames_from,
        )
