"""One manifest entry -> its shard samples (one, or one per clip), or the reason it is quarantined.

probe -> validate -> remux or transcode (H.264, short side <= 320) -> sample; with clipping
(``clip_seconds`` > 0 or ``clip_mode = "scenes"``) the source, or its manifest range, is cut into
clips, each transcoded on its own. Runs inside a Ray task; it knows nothing of Ray. Every failure
of a video becomes a one-line reason, never an exception: a bad video must not stop a job over a
million good ones. (Bad options are the caller's error: :func:`check_clip_options` raises.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import io as sio
from pipeline.core.errors import DataError, StorageError, VideoError
from pipeline.data.manifest import ManifestEntry, check_uri
from pipeline.data.shard_writer import Sample, sample_key

if TYPE_CHECKING:
    from pipeline.video.probe import VideoInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestOptions:
    """The per-video part of the shard config (see ``ShardSection`` for the meaning of each)."""

    transcode: bool = True
    max_short_side: int = 320
    fps_cap: float = 0.0
    crf: int = 23
    preset: str = "veryfast"
    min_frames: int = 4
    max_frames: int = 100_000
    max_pixels: int = 40_000_000
    max_side: int = 16384
    max_duration: float = 3600.0
    allowed_roots: tuple[str, ...] = ()
    remux: bool = True  # with transcode: H.264 inputs already within the limits are remuxed, not re-encoded
    clip_seconds: float = 0.0  # > 0: cut each source (or its manifest [start, end) range) into windows of this length
    min_clip_seconds: float = 1.0  # a last window (or a scene) shorter than this is not a clip: dropped_seconds
    clip_mode: str = "fixed"  # "fixed" | "scenes" (scene cuts; scenes longer than clip_seconds cut into windows)
    scene_threshold: float = 27.0  # PySceneDetect content-detector threshold for "scenes"

    @property
    def clipping(self) -> bool:
        return self.clip_seconds > 0 or self.clip_mode == "scenes"


@dataclass
class Ingested:
    """What one source became: its samples, in time order, and the clips that failed."""

    samples: list[Sample]  # one for a whole video / manifest range, one per clip otherwise
    failed: list[dict] = field(default_factory=list)  # per-clip failures: {"key", "start", "end", "reason"}
    dropped_seconds: float = 0.0  # tail (and, in scene mode, too-short scenes) not cut into clips


CLIP_MODES = ("fixed", "scenes")


def check_clip_options(opts: IngestOptions) -> None:
    """Raise DataError (one line) for clip options no video can satisfy; the driver calls this
    before any compute, so a missing PySceneDetect fails the job, not every video."""
    from pipeline.video.clips import SCENEDETECT_HINT, scenedetect_missing

    if opts.clip_mode not in CLIP_MODES:
        raise DataError(f"shard.clip_mode = {opts.clip_mode!r}: must be one of {', '.join(map(repr, CLIP_MODES))}")
    for name in ("clip_seconds", "min_clip_seconds"):
        value = getattr(opts, name)
        if not math.isfinite(value) or value < 0:
            raise DataError(f"shard.{name} = {value}: must be a number of seconds >= 0")
    if opts.clip_seconds > 0 and opts.min_clip_seconds > opts.clip_seconds:
        raise DataError(f"shard.min_clip_seconds = {opts.min_clip_seconds} exceeds shard.clip_seconds = "
                        f"{opts.clip_seconds}: no clip could be kept")
    if opts.clipping and not opts.transcode:
        raise DataError("cutting clips (shard.clip_seconds > 0 or clip_mode = 'scenes') needs shard.transcode = true")
    if opts.clip_mode == "scenes":
        if not math.isfinite(opts.scene_threshold) or opts.scene_threshold <= 0:
            raise DataError(f"shard.scene_threshold = {opts.scene_threshold}: must be > 0")
        why = scenedetect_missing()
        if why:
            raise DataError(f"shard.clip_mode = 'scenes' needs PySceneDetect: {SCENEDETECT_HINT} ({why})")


def _local_path(uri: str) -> Path:
    """The file a local uri names (``file://localhost/x`` is ``/x``, as ``check_uri`` reads it)."""
    rest = uri.removeprefix("file://")
    return Path(rest[len("localhost"):] if uri.startswith("file://localhost/") else rest)


def _outside_roots(uri: str, roots: tuple[str, ...]) -> str | None:
    """``check_uri`` is syntactic: a symlink, or a relative path (resolved against the worker's
    working directory), can still lead out of the allowed roots. Check where the file really is."""
    if not roots or sio.is_remote(uri):
        return None
    real_roots = [r if sio.is_remote(r) else os.path.realpath(_local_path(r)) for r in roots]
    return check_uri(os.path.realpath(_local_path(uri)), real_roots)


@contextlib.contextmanager
def _local_source(uri: str) -> Iterator[tuple[str, str]]:
    """``(local path, source sha256)``: a local file is read in place; a remote object is
    downloaded once to a temporary file (streamed, never held in memory), removed on exit."""
    if not sio.is_remote(uri):
        path = _local_path(uri)
        if not path.is_file():
            raise VideoError("missing file")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        yield str(path), digest.hexdigest()
        return
    fd, tmp = tempfile.mkstemp(prefix="tubelet-ingest-", suffix=Path(uri).suffix[:16])
    try:
        fs, rpath = sio.filesystem(uri)

        def download() -> str:
            digest = hashlib.sha256()
            with open(tmp, "wb") as out, fs.open(rpath, "rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
            return digest.hexdigest()

        os.close(fd)
        fd = -1
        yield tmp, sio.retrying(f"read {uri}", download)
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_decodes(data: bytes, num_frames: int) -> None:
    """Decode first, middle and last frames of what we are about to store."""
    from pipeline.video.decode import decode_frames

    indices = sorted({0, num_frames // 2, num_frames - 1})
    frames = decode_frames(data, indices, backend="pyav")
    if frames.shape[0] != len(indices) or not np.isfinite(frames).all():
        raise VideoError(f"undecodable frames at index {indices}")


def _reason(exc: BaseException, uri: str) -> str:
    """The one-line quarantine reason for an exception raised while ingesting ``uri``."""
    if isinstance(exc, VideoError):
        return str(exc)
    if isinstance(exc, StorageError):
        text = str(exc)
        return "missing file" if text.endswith("not found") else f"unreadable: {text}"
    if isinstance(exc, MemoryError):
        return "unreadable: out of memory while decoding"
    log.warning("unexpected error on %s: %r", uri, exc)
    return f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def remuxable(info: VideoInfo, opts: IngestOptions) -> bool:
    """Whether the source ``info`` already is what transcoding would make of it (shape-wise):
    H.264 yuv420p, upright, even sizes, short side and fps within the limits."""
    return (info.codec == "h264" and info.pix_fmt == "yuv420p" and info.rotation == 0
            and info.width % 2 == 0 and info.height % 2 == 0
            and min(info.width, info.height) <= opts.max_short_side
            and (not opts.fps_cap or info.fps <= opts.fps_cap))


def _remux(path: str, src_info: VideoInfo, opts: IngestOptions) -> tuple[bytes, VideoInfo]:
    from pipeline.video.probe import probe
    from pipeline.video.remux import remux_video

    data, packets = remux_video(path, max_packets=opts.max_frames)
    if src_info.frames_from == "metadata" and packets < 0.95 * src_info.num_frames:
        raise VideoError(f"truncated or corrupt stream: {packets} of {src_info.num_frames} frames present")
    info = probe(data, max_pixels=opts.max_pixels, max_side=opts.max_side, max_frames=opts.max_frames)
    _check_decodes(data, info.num_frames)
    return data, info


def _source_meta(src_info: VideoInfo) -> dict:
    return {k: getattr(src_info, k) for k in ("width", "height", "fps", "num_frames", "codec")}


def _probe_source(path: str, opts: IngestOptions, clipping: bool) -> VideoInfo:
    """Probe once: headers (frame count from metadata when stated) and the first frame. With
    clipping, ``max_frames`` bounds each clip (in transcode), the source only ``max_duration``."""
    from pipeline.video.probe import probe

    src_info = probe(path, max_pixels=opts.max_pixels, max_side=opts.max_side,
                     max_frames=sys.maxsize if clipping else opts.max_frames)
    if src_info.duration and src_info.duration > opts.max_duration:
        raise VideoError(f"too long: {src_info.duration:.0f} s > {opts.max_duration:.0f} s limit")
    return src_info


def _convert(path: str, entry: ManifestEntry, opts: IngestOptions) -> tuple[bytes, dict]:
    """One sample for the whole source, or its manifest range: remux, transcode or copy."""
    from pipeline.video.transcode import transcode

    src_info = _probe_source(path, opts, clipping=False)
    data: bytes | None = None
    if opts.transcode:
        if opts.remux and entry.start is None and entry.end is None and remuxable(src_info, opts):
            try:
                data, info = _remux(path, src_info, opts)
                how = "remux"
            except Exception as exc:  # noqa: BLE001 - any remux problem: transcode instead
                log.info("remux of %s failed (%s); transcoding", entry.uri, exc)
                data = None
        if data is None:
            data, info = transcode(path, max_short_side=opts.max_short_side, fps_cap=opts.fps_cap or None,
                                   crf=opts.crf, preset=opts.preset, start_sec=entry.start, end_sec=entry.end,
                                   min_frames=opts.min_frames, max_pixels=opts.max_pixels, max_side=opts.max_side,
                                   max_frames=opts.max_frames, info=src_info)
            how = "transcode"
    else:
        if entry.start is not None:
            raise VideoError("clip ranges need transcoding (shard.transcode = true)")
        data = Path(path).read_bytes()
        info = src_info
        _check_decodes(data, info.num_frames)
        how = "copy"
    if info.num_frames < opts.min_frames:
        raise VideoError(f"too short: {info.num_frames} frames < {opts.min_frames} required")
    meta = info.to_dict()
    meta["source"] = _source_meta(src_info)
    meta["encode"] = how
    return data, meta


def _windows(path: str, src_info: VideoInfo, entry: ManifestEntry, opts: IngestOptions,
             ) -> tuple[list[tuple[float, float]], float, float, float]:
    """``(clip windows, dropped seconds, range start, range end)`` for a clipped source."""
    from pipeline.video.clips import detect_cuts, fixed_windows, scene_windows

    start = entry.start if entry.start is not None else 0.0
    end = src_info.duration if entry.end is None else min(entry.end, src_info.duration or entry.end)
    if opts.clip_mode == "scenes":
        cuts = detect_cuts(path, start, end, opts.scene_threshold)
        windows, dropped = scene_windows(cuts, start, end, opts.clip_seconds, opts.min_clip_seconds)
    else:
        windows, dropped = fixed_windows(start, end, opts.clip_seconds, opts.min_clip_seconds)
    return windows, dropped, start, end


def _clips(path: str, sha: str, entry: ManifestEntry, key: str, label: int | None,
           opts: IngestOptions) -> Ingested | str:
    from pipeline.video.transcode import transcode

    src_info = _probe_source(path, opts, clipping=True)
    windows, dropped, start, end = _windows(path, src_info, entry, opts)
    if not windows:
        if opts.clip_mode == "scenes" and end - start >= opts.min_clip_seconds:
            return f"too short for a clip: no scene of {opts.min_clip_seconds:.1f} s or more in {end - start:.1f} s"
        return f"too short for a clip: {max(0.0, end - start):.1f} s < {opts.min_clip_seconds:.1f} s"
    out = Ingested(samples=[], failed=[], dropped_seconds=dropped)
    for index, (s, e) in enumerate(windows):
        clip_key = sample_key(ManifestEntry(entry.uri, start=s, end=e))
        try:
            data, info = transcode(path, max_short_side=opts.max_short_side, fps_cap=opts.fps_cap or None,
                                   crf=opts.crf, preset=opts.preset, start_sec=s, end_sec=e,
                                   min_frames=opts.min_frames, max_pixels=opts.max_pixels, max_side=opts.max_side,
                                   max_frames=opts.max_frames, info=src_info)
        except Exception as exc:  # noqa: BLE001 - one bad clip does not lose the others
            out.failed.append({"key": clip_key, "start": s, "end": e, "reason": _reason(exc, entry.uri)})
            continue
        meta = info.to_dict()
        meta.update(source=_source_meta(src_info), encode="transcode", uri=entry.uri, sha256=sha, label=entry.label,
                    split=entry.split, start=s, end=e, key=clip_key, clip_index=index, clips=len(windows),
                    source_key=key)
        out.samples.append(Sample(key=clip_key, mp4=data, meta=meta, label=label))
    if not out.samples:
        return out.failed[0]["reason"]
    return out


def ingest(entry: ManifestEntry, key: str, label: int | None, opts: IngestOptions) -> Ingested | str:
    """The samples of ``entry`` (``key`` is its sample key), or a one-line quarantine reason.

    Raises DataError for options :func:`check_clip_options` rejects (call it before any compute).
    """
    check_clip_options(opts)
    reason = check_uri(entry.uri, list(opts.allowed_roots) or None) or _outside_roots(entry.uri, opts.allowed_roots)
    if reason:
        return reason
    try:
        with _local_source(entry.uri) as (path, source_sha):
            if opts.clipping:
                return _clips(path, source_sha, entry, key, label, opts)
            data, meta = _convert(path, entry, opts)
    except Exception as exc:  # noqa: BLE001 - see _reason: a library bug on one file must not stop the job
        return _reason(exc, entry.uri)
    meta.update(uri=entry.uri, sha256=source_sha, label=entry.label, split=entry.split,
                start=entry.start, end=entry.end, key=key)
    return Ingested(samples=[Sample(key=key, mp4=data, meta=meta, label=label)], failed=[])
