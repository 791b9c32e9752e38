"""Writing WebDataset shards: sample keys, deterministic tars, and the state a rerun checks.

A shard is a plain tar of ``{key}.mp4`` / ``{key}.json`` / ``{key}.cls`` members. Tar headers
carry no time, owner or host, so the same samples in the same order give byte-identical shards.
A shard is first written to a temporary local file and then published atomically (rename, or a
single S3 PUT) together with a state file under ``_state/`` that says which manifest entries it
covers: a rerun trusts a shard only if both exist and its bytes still match.
(Reading shards is :mod:`pipeline.data.shard_index`.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import io as sio
from pipeline.data.manifest import ManifestEntry

INDEX_NAME = "index.json"
QUARANTINE_NAME = "quarantine.jsonl"
STATE_DIR = "_state"
INDEX_VERSION = 1


def sample_key(entry: ManifestEntry) -> str:
    """A stable key from the source uri and clip range (no dots: WebDataset splits keys on them)."""
    clip = "" if entry.start is None else f"|{entry.start:.6f}|{entry.end:.6f}"
    return hashlib.sha1(f"{entry.uri}{clip}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass
class Sample:
    """One processed video, ready to be written: its members' bytes by extension."""

    key: str
    mp4: bytes
    meta: dict[str, Any]
    label: int | None = None

    def members(self) -> list[tuple[str, bytes]]:
        out = [(f"{self.key}.mp4", self.mp4),
               (f"{self.key}.json", json.dumps(self.meta, sort_keys=True).encode())]
        if self.label is not None:
            out.append((f"{self.key}.cls", str(self.label).encode()))
        return out

    @property
    def nbytes(self) -> int:
        # 512-byte header + padded payload per member: the size this sample adds to the tar.
        return sum(512 + (len(data) + 511) // 512 * 512 for _, data in self.members())


@dataclass
class ShardState:
    """What a published shard holds and which manifest entries (by key) it accounts for."""

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    fingerprint: str
    covers: list[str] = field(default_factory=list)  # keys of samples AND of quarantined entries
    quarantined: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


class TarShardWriter:
    """Writes one shard to a local temporary file, deterministically; ``publish`` makes it visible."""

    def __init__(self, output: str, name: str) -> None:
        self.output, self.name = output, name
        local_dir = None if sio.is_remote(output) else output
        fd, self._tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=local_dir)
        self._fh = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.bytes = 0

    def add(self, sample: Sample) -> None:
        for member, data in sample.members():
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        self.bytes += sample.nbytes

    def publish(self) -> tuple[int, str]:
        """Close, hash and atomically publish the shard; returns ``(bytes, sha256)``."""
        self._tar.close()
        self._fh.close()
        digest = hashlib.sha256()
        with open(self._tmp, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        nbytes = os.path.getsize(self._tmp)
        os.chmod(self._tmp, 0o644)  # mkstemp creates 0600; shards are meant to be read by others
        try:
            sio.upload_file(self._tmp, sio.join(self.output, self.name))
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return nbytes, digest.hexdigest()

    def abort(self) -> None:
        for closer in (self._tar.close, self._fh.close):
            try:
                closer()
            except (OSError, ValueError):
                pass
        Path(self._tmp).unlink(missing_ok=True)


def state_uri(output: str, name: str) -> str:
    return sio.join(output, STATE_DIR, f"{name}.json")


def write_state(output: str, state: ShardState) -> None:
    sio.write_text(state_uri(output, state.name), json.dumps(asdict(state), sort_keys=True))


def read_state(output: str, name: str) -> ShardState | None:
    uri = state_uri(output, name)
    if not sio.exists(uri):
        return None
    try:
        return ShardState(**json.loads(sio.read_text(uri)))
    except (ValueError, TypeError):
        return None  # a state file from another version or a torn write: redo the shard


def sha256_of(uri: str) -> str | None:
    """sha256 of a published shard, streamed; ``None`` when it does not exist."""
    fs, path = sio.filesystem(uri)
    if not sio.exists(uri):
        return None
    digest = hashlib.sha256()

    def read() -> None:
        with fs.open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)

    sio.retrying(f"read {uri}", read)
    return digest.hexdigest()


def verify_shard(output: str, state: ShardState, mode: str = "sha256") -> bool:
    """Does the published shard still match its state file (``size`` or full ``sha256``)?"""
    uri = sio.join(output, state.name)
    if not sio.exists(uri) or sio.size(uri) != state.bytes:
        return False
    return mode == "size" or sha256_of(uri) == state.sha256
