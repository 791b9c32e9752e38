"""One way to read, write and list local paths and ``s3://`` URLs (fsspec + s3fs).

Every call goes through :func:`retrying`, which retries transient failures (connection
refused/reset, timeouts, throttling, 5xx) with exponential backoff and turns what is left into a
one-line :class:`~pipeline.core.errors.StorageError`. "Not found" and "access denied" are not
transient and fail at once.

S3 settings come from the standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``) plus ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT_URL`` for S3-compatible
endpoints (MinIO, moto, Ceph). Credentials are never logged.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import fsspec

from pipeline.core.errors import StorageError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_ATTEMPTS = int(os.environ.get("TUBELET_IO_RETRIES", "5"))
RETRY_BASE_DELAY = float(os.environ.get("TUBELET_IO_RETRY_DELAY", "0.5"))
RETRY_MAX_DELAY = 8.0

_TRANSIENT_MARKERS = (
    "could not connect", "connection refused", "connection reset", "connect timeout",
    "read timeout", "timed out", "temporarily unavailable", "slowdown", "slow down",
    "service unavailable", "internal error", "503", "500", "502", "504", "throttl",
    "endpointconnectionerror", "serverdisconnected", "broken pipe", "remote end closed",
)


def is_remote(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and "://" in uri and not uri.startswith("file://")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts with '/', for local paths and URLs alike."""
    out = str(base)
    for part in parts:
        out = out.rstrip("/") + "/" + part.lstrip("/")
    return out


def s3_endpoint() -> str | None:
    return os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")


def filesystem(uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path within it."""
    uri = str(uri)
    if uri.startswith("s3://"):
        endpoint = s3_endpoint()
        fs = fsspec.filesystem(
            "s3",
            client_kwargs={"endpoint_url": endpoint} if endpoint else {},
            config_kwargs={"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}},
            use_listings_cache=False,
        )
        return fs, uri[len("s3://"):]
    if "://" in uri and not uri.startswith("file://"):
        protocol = uri.split("://", 1)[0]
        return fsspec.filesystem(protocol), uri
    return fsspec.filesystem("file"), uri.removeprefix("file://")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def retrying(what: str, fn: Callable[[], T], attempts: int | None = None) -> T:
    """Run ``fn`` with retries on transient errors; raise StorageError with ``what`` on failure."""
    attempts = attempts or RETRY_ATTEMPTS
    delay = RETRY_BASE_DELAY
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except FileNotFoundError as exc:
            raise StorageError(f"{what}: not found") from exc
        except PermissionError as exc:
            raise StorageError(f"{what}: access denied ({_describe(exc)})") from exc
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_transient(exc):
                raise StorageError(f"{what}: {_describe(exc)}") from exc
            if attempt == attempts:
                endpoint = f" (endpoint {s3_endpoint()})" if s3_endpoint() and "s3://" in what else ""
                raise StorageError(f"{what}: unreachable after {attempts} attempts{endpoint}: {_describe(exc)}") from exc
            log.warning("%s: transient error (%s), retry %d/%d in %.1fs", what, _describe(exc), attempt, attempts - 1, delay)
            time.sleep(delay * (1 + 0.2 * random.random()))
            delay = min(delay * 2, RETRY_MAX_DELAY)
    raise AssertionError("unreachable")


def read_bytes(uri: str | os.PathLike) -> bytes:
    fs, path = filesystem(uri)
    return retrying(f"read {uri}", lambda: fs.cat_file(path))


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode("utf-8")


def exists(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return retrying(f"stat {uri}", lambda: fs.exists(path))


def is_file(uri: str | os.PathLike) -> bool:
    fs, path = filesystem(uri)
    return bool(retrying(f"stat {uri}", lambda: fs.isfile(path)))


def is_dir(uri: str | os.PathLike) -> bool:
    """A local folder, or an object-store prefix with objects under it."""
    fs, path = filesystem(uri)
    return bool(retrying(f"stat {uri}", lambda: fs.isdir(path)))


def size(uri: str | os.PathLike) -> int:
    fs, path = filesystem(uri)
    return int(retrying(f"stat {uri}", lambda: fs.size(path)))


def makedirs(uri: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    if is_remote(str(uri)):
        return  # object stores have no directories
    retrying(f"mkdir {uri}", lambda: fs.makedirs(path, exist_ok=True))


def listdir(uri: str | os.PathLike, suffix: str = "") -> list[str]:
    """Full URIs of the files directly under ``uri`` whose names end with ``suffix``, sorted."""
    fs, path = filesystem(uri)
    if not retrying(f"list {uri}", lambda: fs.exists(path)):
        return []
    names = retrying(f"list {uri}", lambda: fs.ls(path, detail=False))
    prefix = "s3://" if str(uri).startswith("s3://") else ""
    return sorted(prefix + n for n in names if n.endswith(suffix) and n.rstrip("/") != path.rstrip("/"))


def remove(uri: str | os.PathLike) -> None:
    fs, path = filesystem(uri)
    if retrying(f"stat {uri}", lambda: fs.exists(path)):
        retrying(f"remove {uri}", lambda: fs.rm(path))


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically: readers see the old object or the whole new one, never a part.

    Local files go to a temporary name in the same folder and are renamed into place; an S3 PUT
    is atomic by itself.
    """
    uri = str(uri)
    if is_remote(uri):
        fs, path = filesystem(uri)
        retrying(f"write {uri}", lambda: fs.pipe_file(path, data))
        return
    target = Path(uri.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Publish a finished local file at ``uri`` atomically (rename locally, PUT on S3)."""
    uri = str(uri)
    if is_remote(uri):
        fs, path = filesystem(uri)
        retrying(f"upload {uri}", lambda: fs.put_file(str(local_path), path))
        return
    target = Path(uri.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local_path, target)


def check_writable(uri: str | os.PathLike) -> None:
    """Fail early, with one line, when the output location cannot be written."""
    probe = join(uri, f".tubelet-write-check-{uuid.uuid4().hex[:8]}")
    try:
        makedirs(uri)
        write_bytes(probe, b"ok")
        remove(probe)
    except StorageError as exc:
        raise StorageError(f"output {uri} is not writable: {exc}") from None
    except OSError as exc:
        raise StorageError(f"output {uri} is not writable: {_describe(exc)}") from None


def storage_options(uri: str) -> dict[str, Any]:
    """Options for libraries that take fsspec ``storage_options`` (pyarrow, webdataset openers)."""
    endpoint = s3_endpoint()
    return {"client_kwargs": {"endpoint_url": endpoint}} if uri.startswith("s3://") and endpoint else {}


# ------------------------------------------------------------------------------------------
# Per-node cache of remote files (init weights)

CACHE_ENV = "TUBELET_CACHE_DIR"
FETCH_LOG = "fetches.jsonl"


def cache_dir() -> Path:
    """``$TUBELET_CACHE_DIR``, else ``<tmp>/tubelet-cache``: one folder per node, shared by its ranks."""
    import tempfile

    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "tubelet-cache")


def _version_key(uri: str, info: dict[str, Any]) -> str:
    """The uri and what identifies its content (size, ETag or mtime): an overwritten object is fetched anew."""
    import hashlib

    stamp = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return hashlib.sha256(f"{uri}|{info.get('size')}|{stamp}".encode()).hexdigest()[:20]


def cached_copy(uri: str) -> str:
    """A local path holding the file ``uri``: the path itself when local, else the node's cached copy.

    The first process of a node to ask downloads it (under an exclusive file lock, to a temporary
    name renamed into place); every other process of that node, now or later, waits for the lock
    and reuses the copy. Keyed by the uri and its size/ETag, so a replaced object is fetched again.
    """
    if not is_remote(uri):
        return uri.removeprefix("file://")
    import fcntl

    fs, path = filesystem(uri)
    info = retrying(f"stat {uri}", lambda: fs.info(path))
    if info.get("type") == "directory":
        raise StorageError(f"{uri}: a folder, not a file")
    folder = cache_dir() / _version_key(uri, info)
    target = folder / Path(path).name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.is_file() and target.stat().st_size == int(info["size"]):
            log.info("node cache hit: %s (%d bytes) at %s", uri, info["size"], target)
            return str(target)
        tmp = folder / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            retrying(f"download {uri}", lambda: fs.get_file(path, str(tmp)))
            if tmp.stat().st_size != int(info["size"]):
                raise StorageError(f"download {uri}: got {tmp.stat().st_size} of {info['size']} bytes")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        with open(cache_dir() / FETCH_LOG, "a") as record:  # what this node downloaded, one line each
            record.write(json.dumps({"uri": uri, "bytes": int(info["size"]), "pid": os.getpid(), "at": time.time()}) + "\n")
    log.info("node cache fetched: %s (%d bytes) into %s", uri, info["size"], target)
    return str(target)
