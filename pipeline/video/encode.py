"""H.264 encoding of raw frames with PyAV, byte-for-byte deterministic.

Determinism matters: shard keys and sha256s must not change between reruns, so the encoder runs
single-threaded with mbtree off, and both the codec and the muxer run in ``bitexact`` mode (no
encoder version string, no creation time).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np

DEFAULT_CRF = 23
DEFAULT_PRESET = "veryfast"


# x264's macroblock-tree rate control reads memory it did not initialise: with it on, the same
# frames encode to different bytes depending on what the process allocated before (seen here
# after any decode: 5 distinct outputs in 5 decode+encode rounds). mbtree=0 makes the output a
# function of the frames alone (12/12 identical), at a few percent more bits at equal quality.
X264_PARAMS = "threads=1:sliced-threads=0:mbtree=0"


class H264Writer:
    """Push uint8 RGB ``[H, W, 3]`` frames one by one; ``finish()`` returns the MP4 bytes.

    Used by :func:`encode_h264` and by the transcoder, so both produce identical bytes.
    """

    def __init__(self, width: int, height: int, fps: float | Fraction, crf: int = DEFAULT_CRF,
                 preset: str = DEFAULT_PRESET, gop: int | None = None) -> None:
        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs even sizes, got {width}x{height}")
        rate = Fraction(fps).limit_denominator(1001)
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, mode="w", format="mp4", options={"fflags": "+bitexact"})
        self._stream = self._container.add_stream(
            "libx264",
            rate=rate,
            options={"crf": str(crf), "preset": preset, "flags": "+bitexact", "x264-params": X264_PARAMS},
        )
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.codec_context.thread_count = 1
        self._stream.codec_context.gop_size = gop or max(1, round(float(rate)))
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def finish(self) -> bytes:
        if self.frames == 0:
            self._container.close()
            raise ValueError("cannot encode zero frames")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        return self._buf.getvalue()


def encode_h264(
    frames: np.ndarray,
    fps: float,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    gop: int | None = None,
) -> bytes:
    """Encode ``frames`` (uint8 ``[T, H, W, 3]`` RGB, H and W even) as an MP4 (H.264, yuv420p).

    ``gop`` is the keyframe interval in frames (default: one per second), which bounds the cost
    of a random seek when training decodes a clip from the middle of a video.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError("cannot encode zero frames")
    writer = H264Writer(frames.shape[2], frames.shape[1], fps, crf=crf, preset=preset, gop=gop)
    for frame in frames:
        writer.write(frame)
    return writer.finish()
