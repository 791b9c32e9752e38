"""One manifest entry -> one shard sample, or the reason it is quarantined.

probe -> validate -> transcode (H.264, short side <= 320) -> sample. Runs inside a Ray task; it
knows nothing of Ray. Every failure becomes a one-line reason, never an exception: a bad video
must not stop a job over a million good ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core import io as sio
from pipeline.core.errors import StorageError, VideoError
from pipeline.data.manifest import ManifestEntry, check_uri
from pipeline.data.shard_writer import Sample

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


def _load_source(uri: str) -> tuple[str | bytes, str]:
    """A local path (read in place) or the object's bytes, plus the source sha256."""
    if sio.is_remote(uri):
        data = sio.read_bytes(uri)
        return data, hashlib.sha256(data).hexdigest()
    path = _local_path(uri)
    if not path.is_file():
        raise VideoError("missing file")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return str(path), digest.hexdigest()


def _check_decodes(data: bytes, num_frames: int) -> None:
    """Decode first, middle and last frames of what we are about to store."""
    from pipeline.video.decode import decode_frames

    indices = sorted({0, num_frames // 2, num_frames - 1})
    frames = decode_frames(data, indices, backend="pyav")
    if frames.shape[0] != len(indices) or not np.isfinite(frames).all():
        raise VideoError(f"undecodable frames at index {indices}")


def _convert(source: str | bytes, entry: ManifestEntry, opts: IngestOptions) -> tuple[bytes, dict]:
    from pipeline.video.probe import probe
    from pipeline.video.transcode import transcode

    limits = dict(max_pixels=opts.max_pixels, max_side=opts.max_side, max_frames=opts.max_frames)
    src_info = probe(source, **limits)
    if src_info.duration and src_info.duration > opts.max_duration:
        raise VideoError(f"too long: {src_info.duration:.0f} s > {opts.max_duration:.0f} s limit")
    if opts.transcode:
        data, info = transcode(source, max_short_side=opts.max_short_side, fps_cap=opts.fps_cap or None,
                               crf=opts.crf, preset=opts.preset, start_sec=entry.start, end_sec=entry.end,
                               min_frames=opts.min_frames, **limits)
    else:
        if entry.start is not None:
            raise VideoError("clip ranges need transcoding (shard.transcode = true)")
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        info = src_info
        _check_decodes(data, info.num_frames)
    if info.num_frames < opts.min_frames:
        raise VideoError(f"too short: {info.num_frames} frames < {opts.min_frames} required")
    meta = info.to_dict()
    meta["source"] = {k: getattr(src_info, k) for k in ("width", "height", "fps", "num_frames", "codec")}
    return data, meta


def ingest(entry: ManifestEntry, key: str, label: int | None, opts: IngestOptions) -> Sample | str:
    """The sample for ``entry``, or a one-line quarantine reason."""
    reason = check_uri(entry.uri, list(opts.allowed_roots) or None) or _outside_roots(entry.uri, opts.allowed_roots)
    if reason:
        return reason
    try:
        source, source_sha = _load_source(entry.uri)
        data, meta = _convert(source, entry, opts)
    except VideoError as exc:
        return str(exc)
    except StorageError as exc:
        text = str(exc)
        return "missing file" if text.endswith("not found") else f"unreadable: {text}"
    except MemoryError:
        return "unreadable: out of memory while decoding"
    except Exception as exc:  # noqa: BLE001 - a library bug on one file must not stop the job
        log.warning("unexpected error on %s: %r", entry.uri, exc)
        return f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    meta.update(uri=entry.uri, sha256=source_sha, label=entry.label, split=entry.split,
                start=entry.start, end=entry.end, key=key)
    return Sample(key=key, mp4=data, meta=meta, label=label)
