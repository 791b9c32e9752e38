"""Tiny WebDataset shards (and broken ones) for the loader tests, written with ``webdataset.TarWriter``.

Videos are 64x48, 24 frames: a shard of three samples is a few tens of KB and decodes in
milliseconds. Samples follow the layout of ``jobs.shard``: ``{key}.mp4`` + ``{key}.json`` +
``{key}.cls`` (when labelled), shards ``{split}-{000000}.tar`` listed in ``index.json``.
"""

from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import webdataset as wds

from pipeline.video.encode import encode_h264
from tests.unit.video_fixtures import moving_frames

W, H, T, FPS = 64, 48, 24, 12
LABELS = ["left", "right", "still"]


@functools.lru_cache(maxsize=16)
def tiny_mp4(seed: int) -> bytes:
    """A distinct 64x48, 24-frame H.264 MP4 per seed (cached: encoding is the slow part)."""
    return encode_h264(moving_frames(T, H, W, seed=seed), FPS, gop=6)


def sample(key: str, seed: int, label: int | None = 0) -> dict[str, Any]:
    """A well-formed sample dict for ``TarWriter.write``."""
    meta = {"uri": f"file:///videos/{key}.mp4", "sha256": "0" * 64, "duration": T / FPS, "fps": FPS,
            "num_frames": T, "width": W, "height": H, "codec": "h264",
            "label": None if label is None else LABELS[label], "split": "train", "start": None, "end": None}
    out: dict[str, Any] = {"__key__": key, "mp4": tiny_mp4(seed % 8), "json": json.dumps(meta).encode()}
    if label is not None:
        out["cls"] = str(label).encode()
    return out


def write_tar(path: Path, samples: Sequence[dict[str, Any]]) -> int:
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return path.stat().st_size


def write_index(root: Path, shards: Sequence[tuple[str, str, int]], labels: Sequence[str] = LABELS) -> None:
    """``shards``: (name, split, samples the index states)."""
    entries = [{"name": n, "split": sp, "samples": k, "bytes": 0, "sha256": ""} for n, sp, k in shards]
    (root / "index.json").write_text(json.dumps({"shards": entries, "labels": list(labels),
                                                  "totals": {"samples": sum(k for _, _, k in shards)}}))


def make_shards(root: Path, sizes: Sequence[int], split: str = "train", labelled: bool = True,
                prefix: str = "") -> list[str]:
    """Shards of ``sizes`` samples each under ``root``; returns every key written, in order."""
    root.mkdir(parents=True, exist_ok=True)
    keys, entries, n = [], [], 0
    for i, size in enumerate(sizes):
        batch = []
        for _ in range(size):
            key = f"{prefix}{split}{n:04d}"
            batch.append(sample(key, n, (n % len(LABELS)) if labelled else None))
            keys.append(key)
            n += 1
        name = f"{split}-{i:06d}.tar"
        write_tar(root / name, batch)
        entries.append((name, split, size))
    write_index(root, entries, LABELS if labelled else [])
    return keys


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a shard file to ``fraction`` of its size (an interrupted copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def corrupt_header(path: Path, member: int) -> None:
    """Overwrite the tar header of the ``member``-th member with garbage (tarfile then stops silently)."""
    with tarfile.open(path) as tar:
        offset = tar.getmembers()[member].offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 512] = b"\x17" * 512
    path.write_bytes(bytes(data))
