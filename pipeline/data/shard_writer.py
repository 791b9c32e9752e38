"""Writing WebDataset shards: sample keys, deterministic tars, and the state a rerun checks.

A shard is a plain tar of ``{key}.mp4`` / ``{key}.json`` / ``{key}.cls`` members. Tar headers
carry no time, owner or host, so the same samples in the same order give byte-identical shards.
A shard is first written to a temporary local file, hashed as it is written, and then published
atomically (a rename, or an S3 upload) before a state file under ``_state/`` that says which
manifest rows it accounts for: the state file is the commit. A rerun trusts a shard only if
both exist and the object still matches its state.
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
    """A published shard: what it holds, and what a rerun checks before trusting it.

    ``members`` digests the manifest rows the shard accounts for (see ``ShardSpec``) and
    ``fingerprint`` the settings that shape its bytes; ``bytes``, ``sha256`` and, on S3, the
    object's ``etag`` describe the tar as published. ``quarantined`` holds the rows (and clips)
    of the shard that became no sample, with their reasons.
    """

    name: str
    split: str
    samples: int
    bytes: int
    sha256: str
    fingerprint: str
    members: str
    videos: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    etag: str = ""
    encodes: dict[str, int] = field(default_factory=dict)  # samples by how they were made: remux, transcode, copy
    dropped_seconds: float = 0.0  # clip mode: source time cut into no clip (tails, short scenes)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
                "sha256": self.sha256}


class _HashingFile:
    """A write-only file that hashes what passes through it: no second read to hash a shard."""

    def __init__(self, fh: Any) -> None:
        self._fh, self.digest, self.bytes = fh, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        return self._fh.write(data)

    def tell(self) -> int:
        return self.bytes

    def close(self) -> None:
        self._fh.close()


class TarShardWriter:
    """Writes one shard to a local temporary file, hashing it as it goes; ``publish`` makes it visible.

    The temporary file sits in the output folder when that is local (publishing is a rename) and
    in the system's temporary folder otherwise (publishing is an upload: multipart for large
    shards, so the object appears whole or not at all).
    """

    def __init__(self, output: str, name: str) -> None:
        self.output, self.name = output, name
        local_dir = None if sio.is_remote(output) else output.removeprefix("file://")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=local_dir)
        self._fh = _HashingFile(os.fdopen(fd, "wb"))
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)  # type: ignore[call-overload]
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

    def publish(self) -> tuple[int, str, str]:
        """Close and atomically publish the shard; returns ``(bytes, sha256, etag)`` (etag: S3 only)."""
        self._tar.close()
        self._fh.close()
        nbytes, sha = self._fh.bytes, self._fh.digest.hexdigest()
        os.chmod(self._tmp, 0o644)  # mkstemp creates 0600; shards are meant to be read by others
        uri = sio.join(self.output, self.name)
        try:
            sio.upload_file(self._tmp, uri)
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        return nbytes, sha, object_etag(uri)

    def abort(self) -> None:
        for closer in (self._tar.close, self._fh.close):
            try:
                closer()
            except (OSError, ValueError):
                pass
        Path(self._tmp).unlink(missing_ok=True)


def object_etag(uri: str) -> str:
    """The S3 object's ETag (its content hash, as the store computed it); ``""`` for local files."""
    if not sio.is_remote(uri):
        return ""
    fs, path = sio.filesystem(uri)
    info = sio.retrying(f"stat {uri}", lambda: fs.info(path))
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


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


def verify_shard(output: str, state: ShardState, mode: str = "record") -> bool:
    """Does the published shard still match its state?

    ``record``: the object exists with the size, and on S3 the ETag, that the state names; nothing
    is read. ``sha256``: the whole shard is read back and hashed.
    """
    uri = sio.join(output, state.name)
    if not sio.exists(uri) or sio.size(uri) != state.bytes:
        return False
    if mode == "sha256":
        return sha256_of(uri) == state.sha256
    return not state.etag or object_etag(uri) == state.etag
