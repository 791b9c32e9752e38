"""Transcode any video PyAV can decode to a small, upright, byte-deterministic H.264 MP4.

Frames stream through: decode -> (clip range) -> (fps cap: drop frames) -> upright + downscale ->
encode, one frame at a time, so a long source never sits in memory decoded. The encoder is
:class:`~pipeline.video.encode.H264Writer`, whose settings make x264 deterministic: reruns give
identical bytes (decoders are bit-exact whatever their threading; x264 runs single-threaded). Bytes are identical across machines of one CPU kind;
swscale's SIMD paths (colour conversion, resize) are not guaranteed bit-exact across CPU kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from fractions import Fraction

import av
import numpy as np

from pipeline.core.errors import VideoError
from pipeline.video.encode import DEFAULT_CRF, DEFAULT_PRESET, H264Writer
from pipeline.video.probe import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    VideoInfo,
    VideoSource,
    error_detail,
    open_container,
    probe,
    video_stream,
)


def _even(v: float) -> int:
    return max(2, int(round(v)) // 2 * 2)


def output_size(width: int, height: int, max_short_side: int) -> tuple[int, int, bool]:
    """``(w, h, resize)`` of the stored (pre-rotation) frame to produce; never upscales.

    Sizes are even (yuv420p): when no downscale is needed an odd size loses its last row/column
    (a crop, no resampling).
    """
    short = min(width, height)
    if short > max_short_side:
        s = max_short_side / short
        return _even(width * s), _even(height * s), True
    return max(2, width // 2 * 2), max(2, height // 2 * 2), False


def keep_mask_rule(src_rate: Fraction, out_rate: Fraction) -> Callable[[int], bool]:
    """``keep(i)`` for clip frame ``i``: uniform deterministic frame dropping from src to out rate.

    Output frame ``j`` is the first source frame with ``floor(i * out / src) == j``.
    """
    ratio = out_rate / src_rate

    def keep(i: int) -> bool:
        return i == 0 or math.floor(i * ratio) != math.floor((i - 1) * ratio)

    return keep


def upright(frame: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise) to ``[H, W, C]``."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, k=k)) if k else frame


def _clip_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 start_sec: float | None, end_sec: float | None, fps: float) -> Iterator[av.VideoFrame]:
    """Decoded frames whose time (from the stream start) lies in ``[start_sec, end_sec)``."""
    base = stream.start_time or 0
    seeked = bool(start_sec and start_sec > 0)
    if seeked:
        # jump to the keyframe before start_sec, then drop frames until start_sec
        container.seek(base + int(start_sec / stream.time_base), stream=stream, backward=True, any_frame=False)
    eps = 1e-3 / max(fps, 1.0)  # timestamps are rounded to the time base; don't lose a boundary frame
    for n, frame in enumerate(container.decode(stream)):
        if frame.pts is None:
            if seeked:
                raise VideoError("truncated or corrupt stream: no timestamps to cut a clip by")
            t = n / fps
        else:
            t = float((frame.pts - base) * stream.time_base)
        if start_sec is not None and t < start_sec - eps:
            continue
        if end_sec is not None and t >= end_sec - eps:
            break
        yield frame


def transcode(
    source: VideoSource,
    max_short_side: int = 320,
    fps_cap: float | None = None,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    start_sec: float | None = None,
    end_sec: float | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = DEFAULT_MAX_SIDE,
    max_frames: int = DEFAULT_MAX_FRAMES,
    min_frames: int = 1,
    gop: int | None = None,
    info: VideoInfo | None = None,
) -> tuple[bytes, VideoInfo]:
    """Transcode ``source`` (path or bytes) to H.264 MP4; returns ``(mp4 bytes, VideoInfo of them)``.

    Upright (display rotation applied), short side <= ``max_short_side`` (aspect kept, area
    downscale, never upscaled), even sizes, ``fps <= fps_cap`` by uniform frame dropping, only
    frames in ``[start_sec, end_sec)`` when given. Bad input raises a classified VideoError.
    ``info``: the caller's probe of ``source`` (then it is not probed again: cutting many clips of one
    long source probes it once, and ``max_frames`` bounds each clip's frames, not the source's).
    """
    if info is None:
        info = probe(source, max_pixels=max_pixels, max_side=max_side, max_frames=max_frames)
    rotated = info.rotation in (90, 270)
    disp_w, disp_h = (info.height, info.width) if rotated else (info.width, info.height)
    out_w, out_h, resize = output_size(disp_w, disp_h, max_short_side)
    store_w, store_h = (out_h, out_w) if rotated else (out_w, out_h)  # size before rotating
    with open_container(source) as container:
        stream = video_stream(container)
        stream.thread_type = "AUTO"  # FFmpeg decoders are bit-exact whatever the threading
        src_rate = Fraction(info.fps).limit_denominator(1001)
        out_rate = min(src_rate, Fraction(fps_cap).limit_denominator(1001)) if fps_cap else src_rate
        keep = keep_mask_rule(src_rate, out_rate)
        writer = H264Writer(out_w, out_h, out_rate, crf, preset, gop)
        n = -1
        try:
            for n, frame in enumerate(_clip_frames(container, stream, start_sec, end_sec, info.fps)):
                if n >= max_frames:
                    raise VideoError(f"absurd size: more than {max_frames} frames exceeds limit")
                if not keep(n):
                    continue
                if resize or (frame.width, frame.height) != (info.width, info.height):
                    rgb = frame.reformat(width=store_w, height=store_h, format="rgb24", interpolation="AREA").to_ndarray()
                else:
                    rgb = frame.to_ndarray(format="rgb24")[:store_h, :store_w]
                writer.write(upright(rgb, info.rotation))
        except av.error.FFmpegError as exc:
            raise VideoError(f"undecodable frames at index {n}: {error_detail(exc)}") from exc
        decoded = n + 1
        if start_sec is None and end_sec is None and info.frames_from == "metadata" and decoded < 0.95 * info.num_frames:
            # the header promised more: the file was cut (e.g. after a front moov) or is damaged
            raise VideoError(f"truncated or corrupt stream: decoded {decoded} of {info.num_frames} frames")
        if writer.frames == 0:
            raise VideoError("too short: 0 frames in range" if start_sec or end_sec else "undecodable frames at index 0")
        if writer.frames < min_frames:
            raise VideoError(f"too short: {writer.frames} frames < {min_frames} required")
        data = writer.finish()
    return data, probe(data)
