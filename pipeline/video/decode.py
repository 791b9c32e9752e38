"""Decode frames by index from a video path or bytes, with decord or PyAV.

``open_video(source, backend)`` returns a :class:`VideoReader` that keeps the source open for
repeated clip reads (repeated augmentation, several test clips); ``decode_frames`` is the
one-shot form. Frames come back as uint8 RGB ``[N, H, W, 3]`` in the order of the indices asked
for (repeats and any order allowed), as stored: no display rotation is applied (transcoded shards
are already upright, see ``transcode``).

``backend="auto"`` uses decord (fast random access) and falls back to PyAV when decord is not
installed, fails to open or decode, or states a frame count other than PyAV's probe (decord 0.6.0
was seen misreporting a cinepak AVI's count; decord2 counts a cut file below its header, see
below), and for display-rotated streams. A fallback is logged at debug level, recorded on the reader
(``reader.fallback_reason``) and counted per process (:func:`fallback_counts`).

decord is the ``decord2`` package (3.4.0, the maintained fork of decord 0.6.0, same module and
API; x86-64 CPU wheel, FFmpeg 8 like PyAV 18). ``python -m benchmarks.bench_decoders`` checks it
against decord 0.6.0 and PyAV on every video the tests make plus cinepak, MPEG-4 part 2, VP9,
HEVC, AV1 and variable-frame-rate files: bit-identical frames to PyAV on all of them (H.264,
MJPEG and FFV1 also checked by a test here; decord 0.6.0 could not open AV1) except rotated
streams, which both decord releases fail to decode ("from_size == to_size"); broken files are
refused as decord 0.6.0 refused them, except an MP4 cut after a front ``moov``: decord2 opens it,
states the 16 frames present (like PyAV) where the header promises 40, so the count check falls
back, and decoding it failed now and then (decord 0.6.0 refused to open it). Single-threaded
clip reads (16 frames at stride 4, 426x320 H.264, open included) ran 1.16x decord 0.6.0's speed
and 1.14x PyAV's (554 vs 468 vs 491 frames/s, medians of 7 interleaved rounds; 2-core Xeon).
"""

from __future__ import annotations

import bisect
import io
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import av
import numpy as np

from pipeline.core.errors import VideoError
from pipeline.video.probe import VideoInfo, VideoSource, error_detail, open_container, probe, video_stream

log = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav"]
_FALLBACKS: Counter[str] = Counter()


def fallback_counts() -> dict[str, int]:
    """How many ``auto`` readers fell back to PyAV in this process, by kind of reason."""
    return dict(_FALLBACKS)


def _unique_sorted(indices: Sequence[int] | np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique indices, positions mapping them back to the order asked for)."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("no frame indices given")
    if idx.min() < 0 or idx.max() >= num_frames:
        raise IndexError(f"frame indices must be in [0, {num_frames}), got [{idx.min()}, {idx.max()}]")
    uniq, inverse = np.unique(idx, return_inverse=True)
    return uniq, inverse


class _PyAVSource:
    """PyAV decoding by index: seek to the nearest keyframe, decode forward through sorted targets."""

    name = "pyav"

    def __init__(self, source: VideoSource, threads: int = 0) -> None:
        self._source = source
        self._threads = threads
        self._ctx = open_container(source)
        self._container = self._ctx.__enter__()
        self._stream = video_stream(self._container)
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0.0)
        self.height, self.width = self._stream.codec_context.height, self._stream.codec_context.width
        self._build_index()
        # Frame threading decodes several frames at once; safe here because seek() flushes it.
        self._stream.thread_type = "AUTO"
        self._stream.codec_context.thread_count = threads

    def _build_index(self) -> None:
        """Demux (no decode) once: presentation order of packets and where the keyframes are."""
        pts, keys = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size:
                    pts.append(packet.pts)
                    keys.append(bool(packet.is_keyframe))
        except av.error.FFmpegError as exc:
            raise VideoError(f"truncated or corrupt stream: demux failed after {len(pts)} packets: {error_detail(exc)}") from exc
        self.num_frames = len(pts)
        if self.num_frames == 0:
            raise VideoError("undecodable frames at index 0")
        # Without unique timestamps, frames cannot be matched to indices after a seek: decode
        # from the start and count instead (rare: some raw AVI/elementary streams).
        self._sequential = any(p is None for p in pts) or len(set(pts)) != len(pts)
        order = np.argsort(np.asarray([p or 0 for p in pts]), kind="stable")
        self._pts = [pts[i] for i in order]
        self._pts_index = {p: i for i, p in enumerate(self._pts)}
        self._keyframes = [i for i, j in enumerate(order) if keys[j]] or [0]

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        # reformat to the stream size so a mid-stream resolution change cannot break np.stack
        return frame.reformat(width=self.width, height=self.height, format="rgb24").to_ndarray()

    def _restart(self, index: int) -> Any:
        """A frame iterator starting at the keyframe ``index`` (at the first frame in sequential mode)."""
        if self._sequential:
            self._container.seek(0, backward=True, any_frame=False)  # whole-file position, not a pts
            return enumerate(self._container.decode(self._stream))
        self._container.seek(int(self._pts[index]), stream=self._stream, backward=True, any_frame=False)
        return ((self._pts_index.get(f.pts, -1), f) for f in self._container.decode(self._stream))

    def get_sorted(self, targets: np.ndarray) -> np.ndarray:
        """Frames for sorted unique ``targets``, in that order: uint8 ``[len(targets), H, W, 3]``."""
        out: dict[int, np.ndarray] = {}
        wanted = frozenset(targets.tolist())
        frames, cur, start = None, -1, 0
        for t in targets.tolist():
            key = self._keyframes[bisect.bisect_right(self._keyframes, t) - 1]
            # Seek when going backwards or when a keyframe lies ahead: cheaper than decoding through.
            if frames is None or (not self._sequential and key > cur + 1):
                start = 0 if self._sequential else key
                frames, cur = self._restart(start), start - 1
            try:
                while cur < t:
                    i, frame = next(frames, (None, None))
                    if frame is None:
                        raise VideoError(f"undecodable frames at index {cur + 1}")
                    if i < start:  # before the keyframe we seeked to (open GOP): may be damaged
                        continue
                    cur = i
                    if i in wanted and i not in out:
                        out[i] = self._rgb(frame)
            except av.error.FFmpegError as exc:
                raise VideoError(f"undecodable frames at index {cur + 1}: {error_detail(exc)}") from exc
        return np.stack([out[t] for t in targets.tolist()])

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)


class _DecordSource:
    """decord's VideoReader (the decord2 package; installed on x86-64; reads bytes through a BytesIO)."""

    name = "decord"

    def __init__(self, source: VideoSource, threads: int = 0) -> None:
        import decord  # optional dependency (pyproject: decord2 on x86-64 only)

        file: Any = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
        self._vr = decord.VideoReader(file, ctx=decord.cpu(0), num_threads=threads)
        self.num_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps())

    @property
    def height(self) -> int:
        return int(self._vr[0].shape[0])  # decord states no size without decoding a frame

    @property
    def width(self) -> int:
        return int(self._vr[0].shape[1])

    def get_sorted(self, targets: np.ndarray) -> np.ndarray:
        # Already one [N, H, W, 3] array: no per-frame list to stack again (a 16-frame clip is ~6 MB).
        # Taken over through DLPack, not copied by asnumpy(): the copy, into freshly faulted pages,
        # cost ~1.5 ms of a ~30 ms 16 x 426x320 clip read. The array views decord's buffer, which
        # the torch tensor owns (freed with it, whenever the reader is closed).
        from torch.utils.dlpack import from_dlpack

        return from_dlpack(self._vr.get_batch(targets.tolist()).to_dlpack()).numpy()

    def close(self) -> None:
        del self._vr


class VideoReader:
    """An opened video for repeated reads: ``.get(indices) -> uint8 [N, H, W, 3]``.

    ``backend`` is the backend actually serving frames; ``fallback_reason`` says why ``auto``
    is not using decord (None when it is, or when a backend was named explicitly).
    """

    def __init__(self, impl: Any, info: VideoInfo | None, source: VideoSource, threads: int, auto: bool) -> None:
        self._impl, self.info, self._source, self._threads, self._auto = impl, info, source, threads, auto
        self.fallback_reason: str | None = None

    @property
    def backend(self) -> str:
        return self._impl.name

    @property
    def num_frames(self) -> int:
        return self._impl.num_frames

    @property
    def fps(self) -> float:
        return self.info.fps if self.info else self._impl.fps

    def fall_back(self, kind: str, detail: str) -> None:
        """Switch to PyAV for the rest of this reader's life; log and count why."""
        self.fallback_reason = f"{kind}: {detail}" if detail else kind
        _FALLBACKS[kind] += 1
        log.debug("decode falls back to PyAV (%s)", self.fallback_reason)
        if self._impl is not None:
            self._impl.close()
        self._impl = _PyAVSource(self._source, self._threads)

    def get(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 RGB ``[len(indices), H, W, 3]``."""
        uniq, inverse = _unique_sorted(indices, self.num_frames)
        try:
            frames = self._impl.get_sorted(uniq)
        except VideoError:
            raise
        except Exception as exc:  # decord raises its own error types (DECORDError, RuntimeError...)
            if not (self._auto and self.backend == "decord"):
                raise VideoError(f"undecodable frames: {self.backend}: {error_detail(exc)}") from exc
            self.fall_back("decord decode failed", error_detail(exc))
            frames = self._impl.get_sorted(uniq)
        # training clips ask for sorted, distinct frames: skip the reordering copy then
        in_order = len(uniq) == len(inverse) and bool((inverse == np.arange(len(inverse))).all())
        return frames if in_order else frames[inverse]

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(
    source: VideoSource, backend: Backend = "auto", *, info: VideoInfo | None = None, threads: int = 0
) -> VideoReader:
    """Open ``source`` (path or bytes) for frame reads. ``threads=0`` lets the decoder choose.

    ``info`` (e.g. from a shard's JSON or an earlier probe) saves the PyAV probe that ``auto``
    otherwise runs to check decord's frame count. Bad input raises a classified VideoError.
    """
    if backend == "pyav":
        return VideoReader(_PyAVSource(source, threads), info, source, threads, auto=False)
    if backend == "decord":
        try:
            return VideoReader(_DecordSource(source, threads), info, source, threads, auto=False)
        except ImportError:
            raise
        except Exception as exc:
            raise VideoError(f"undecodable frames: decord: {error_detail(exc)}") from exc
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    info = info or probe(source)  # classifies bad inputs before decord sees them (it can hang)
    reader = VideoReader(None, info, source, threads, auto=True)
    if info.rotation:
        # decord (0.6.0 and decord2 3.4.0) fails on streams with a display rotation ("from_size == to_size")
        reader.fall_back("rotated video", f"{info.rotation} degrees")
        return reader
    try:
        impl = _DecordSource(source, threads)
    except ImportError as exc:
        reader.fall_back("decord not installed", error_detail(exc))
        return reader
    except Exception as exc:
        reader.fall_back("decord open failed", error_detail(exc))
        return reader
    reader._impl = impl
    if impl.num_frames != info.num_frames:
        reader.fall_back("frame count mismatch", f"decord {impl.num_frames} vs pyav {info.num_frames}")
    return reader


def decode_frames(
    source: VideoSource, indices: Sequence[int] | np.ndarray, backend: Backend = "auto", *, threads: int = 0
) -> np.ndarray:
    """Decode ``indices`` of ``source`` -> uint8 RGB ``[len(indices), H, W, 3]`` in the order given."""
    with open_video(source, backend, threads=threads) as reader:
        return reader.get(indices)
