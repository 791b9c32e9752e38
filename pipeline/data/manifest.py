"""The manifest: one row per source video (or clip) with ``uri[,label][,split][,start,end]``.

Two formats, chosen by extension or sniffed from the content:

- CSV with a header naming its columns (``uri`` required; ``label``, ``split``, ``start``,
  ``end`` optional), or a header-less single column of URIs.
- JSONL: one object per line with the same keys.

Reading validates every row and raises :class:`DataError` with ``name:line: reason`` on the
first malformed one: a manifest is user input, and a half-read manifest would silently change
the dataset. A caller that accounts for every row itself (the sharding job quarantines bad rows)
passes a ``rejects`` list instead and gets one :class:`Reject` per bad row. Hostile URIs are *not* a read error; :func:`check_uri` gives the reason the
sharding job records when it quarantines them.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence
from urllib.parse import unquote

from pipeline.core.errors import DataError

COLUMNS = ("uri", "label", "split", "start", "end")
ALLOWED_SCHEMES = ("file", "s3")
# Split names end up in shard file names ({split}-000000.tar), so keep them filename-safe.
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class ManifestEntry:
    """One source video, or the clip ``[start, end)`` seconds of it when both are set."""

    uri: str
    label: str | None = None
    split: str | None = None
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict[str, str | float]:
        """Only the fields that are set (what a JSONL row holds)."""
        return {k: v for k in COLUMNS if (v := getattr(self, k)) is not None}


@dataclass(frozen=True)
class Reject:
    """A manifest row that could not be read: where it is, its uri if one could be read, and why."""

    line: int
    uri: str
    reason: str


# --------------------------------------------------------------------------------------------
# Reading


def _entry_from_fields(fields: dict[str, object], where: str) -> ManifestEntry:
    """Validate one row (already split into named fields) and build its entry."""
    uri = fields.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise DataError(f"{where}: empty or missing uri")
    label = fields.get("label")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)  # JSONL may carry integer class ids; labels are names everywhere else
    if label is not None and not isinstance(label, str):
        raise DataError(f"{where}: label must be a string, got {label!r}")
    split = fields.get("split")
    if split is not None and (not isinstance(split, str) or (split and not _SPLIT_RE.match(split))):
        raise DataError(f"{where}: split {split!r} must be letters, digits, '_', '-' or '.'")
    start, end = (_seconds(fields.get(k), k, where) for k in ("start", "end"))
    if (start is None) != (end is None):
        raise DataError(f"{where}: start and end must be given together")
    if start is not None and end is not None and not end > start:
        raise DataError(f"{where}: end ({end}) must be greater than start ({start})")
    return ManifestEntry(uri.strip(), (label or "").strip() or None, split or None, start, end)


def _seconds(value: object, key: str, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {key} must be a number of seconds, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds < 0:
        raise DataError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
    return seconds


def _iter_csv(lines: Iterable[str], name: str) -> Iterator[tuple[int, ManifestEntry | Reject]]:
    reader = csv.reader(lines)
    header: list[str] | None = None
    for row in reader:
        line = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if header is None:
            first = [c.strip().lower() for c in row]
            if "uri" in first:
                unknown = [c for c in first if c not in COLUMNS]
                if unknown or len(set(first)) != len(first):
                    raise DataError(f"{name}:{line}: bad header {','.join(first)!r}; "
                                    f"columns must be distinct, from {', '.join(COLUMNS)}")
                header = first
                continue
            if len(first) != 1:
                raise DataError(f"{name}:1: no header; the first row must name the columns ({', '.join(COLUMNS)})")
            header = ["uri"]  # header-less list of URIs
        if len(row) != len(header):
            yield line, Reject(line, row[0] if header[0] == "uri" and row else "",
                               f"expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            continue
        yield line, _checked(dict(zip(header, row)), name, line)


def _iter_jsonl(lines: Iterable[str], name: str) -> Iterator[tuple[int, ManifestEntry | Reject]]:
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            obj, reason = None, f"invalid JSON ({exc.msg})"
        else:
            reason = "" if isinstance(obj, dict) else f"expected a JSON object, got {type(obj).__name__}"
            unknown = sorted(set(obj) - set(COLUMNS)) if isinstance(obj, dict) else []
            if unknown:
                reason = f"unknown key {unknown[0]!r}; valid keys: {', '.join(COLUMNS)}"
        if reason:
            uri = obj.get("uri") if isinstance(obj, dict) else None
            yield line_no, Reject(line_no, uri if isinstance(uri, str) else "", reason)
            continue
        yield line_no, _checked(obj, name, line_no)


def _checked(fields: dict[str, object], name: str, line: int) -> ManifestEntry | Reject:
    try:
        return _entry_from_fields(fields, f"{name}:{line}")
    except DataError as exc:
        uri = fields.get("uri")
        return Reject(line, uri if isinstance(uri, str) else "", str(exc).split(": ", 1)[-1])


def iter_manifest(lines: Iterable[str], fmt: str | None = None, name: str = "<manifest>",
                  ) -> Iterator[tuple[int, ManifestEntry | Reject]]:
    """Stream a manifest: ``(line, entry)`` per good row, ``(line, Reject)`` per bad one.

    Holds one row at a time, so a manifest of millions of rows is read in constant memory. The
    header must be valid (DataError otherwise). Duplicates are not detected here: that needs
    every key seen so far (see :func:`parse_manifest_lines`, and the sharding job's plan).
    ``fmt`` is ``csv``/``jsonl``, or sniffed from the first non-blank line.
    """
    it = (ln.rstrip("\r\n") for ln in lines)
    if fmt is None:
        head: list[str] = []
        for ln in it:
            head.append(ln)
            if ln.strip():
                break
        fmt = "jsonl" if head and head[-1].lstrip().startswith("{") else "csv"
        it = itertools.chain(head, it)
    if fmt not in ("csv", "jsonl"):
        raise DataError(f"{name}: unknown manifest format {fmt!r}; use csv or jsonl")
    return _iter_csv(it, name) if fmt == "csv" else _iter_jsonl(it, name)


def _drop_duplicates(entries: list[tuple[int, ManifestEntry]], name: str,
                     rejects: list[Reject] | None) -> list[tuple[int, ManifestEntry]]:
    # Shard keys are derived from uri + clip range: a duplicate would collide, not be "sampled twice".
    seen: dict[tuple[str, float | None, float | None], int] = {}
    kept = []
    for line, e in entries:
        key = (e.uri, e.start, e.end)
        if key in seen:
            if rejects is None:
                raise DataError(f"{name}:{line}: duplicate of line {seen[key]} ({e.uri})")
            rejects.append(Reject(line, e.uri, f"duplicate of line {seen[key]}"))
            continue
        seen[key] = line
        kept.append((line, e))
    return kept


def parse_manifest_lines(lines: Iterable[str], fmt: str | None = None, name: str = "<manifest>",
                         rejects: list[Reject] | None = None) -> list[tuple[int, ManifestEntry]]:
    """Like :func:`parse_manifest`, with the line number of each entry; bad rows go to ``rejects``
    when a list is given (the header must still be valid), else raise DataError."""
    parsed = []
    for line, row in iter_manifest(lines, fmt, name):
        if isinstance(row, Reject):
            if rejects is None:
                raise DataError(f"{name}:{line}: {row.reason}")
            rejects.append(row)
        else:
            parsed.append((line, row))
    return _drop_duplicates(parsed, name, rejects)


def parse_manifest(lines: Iterable[str], fmt: str | None = None, name: str = "<manifest>") -> list[ManifestEntry]:
    """Parse manifest content (lines, e.g. read from S3). ``fmt`` is ``csv``/``jsonl`` or sniffed."""
    return [e for _, e in parse_manifest_lines(lines, fmt, name)]


def manifest_format(path: str | os.PathLike[str]) -> str | None:
    """``csv``/``jsonl`` from a file name, ``None`` when the extension says nothing."""
    suffix = Path(str(path)).suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)


def read_manifest(source: str | os.PathLike[str] | IO[str] | Iterable[str], fmt: str | None = None) -> list[ManifestEntry]:
    """Read a manifest from a local path, a text (a ``str`` holding a newline), a file, or lines."""
    if isinstance(source, str) and "\n" in source:
        return parse_manifest(io.StringIO(source), fmt, "<text>")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"manifest not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        return parse_manifest(text.splitlines(), fmt or manifest_format(path), str(path))
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file>"))
        return parse_manifest(source.read().splitlines(), fmt or manifest_format(name), name)  # type: ignore[union-attr]
    return parse_manifest(source, fmt)


# --------------------------------------------------------------------------------------------
# Writing


def _sort_key(e: ManifestEntry) -> tuple[str, str, float, float]:
    return (e.split or "", e.uri, -1.0 if e.start is None else e.start, -1.0 if e.end is None else e.end)


def format_manifest(entries: Sequence[ManifestEntry], fmt: str = "csv") -> str:
    """Manifest text, sorted by (split, uri, start) so that equal inputs give equal bytes."""
    ordered = sorted(entries, key=_sort_key)
    if fmt == "jsonl":
        return "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in ordered)
    if fmt != "csv":
        raise DataError(f"unknown manifest format {fmt!r}; use csv or jsonl")
    # Only the columns somebody uses, so an unlabelled manifest stays a plain list of URIs + split.
    columns = [c for c in COLUMNS if c == "uri" or any(getattr(e, c) is not None for e in ordered)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for e in ordered:
        writer.writerow(["" if getattr(e, c) is None else getattr(e, c) for c in columns])
    return buf.getvalue()


def write_manifest(entries: Sequence[ManifestEntry], path: str | os.PathLike[str]) -> Path:
    """Write CSV or JSONL (by extension) atomically; an identical existing file is left untouched."""
    path = Path(path)
    fmt = manifest_format(path)
    if fmt is None:
        raise DataError(f"{path}: manifest must end in .csv or .jsonl")
    text = format_manifest(entries, fmt)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------
# URI checks and labels


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _under(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root.endswith("/") else root + "/")


def _normalise_root(root: str) -> str:
    if _SCHEME_RE.match(root) and not root.startswith("file://"):
        return root.rstrip("/")
    return os.path.normpath(os.path.abspath(unquote(root[7:]) if root.startswith("file://") else root))


def check_uri(uri: str, allowed_roots: Sequence[str] | None = None) -> str | None:
    """The reason ``uri`` must not be read, or ``None`` when it is acceptable.

    Rejects: empty URIs, text that is not valid UTF-8 (lone surrogates from undecodable bytes)
    or holds control/format characters, schemes other than local paths, ``file://`` and
    ``s3://``, ``..`` components anywhere (also percent-encoded), and — when ``allowed_roots``
    (local dirs and/or ``s3://bucket/prefix``) are given — absolute paths and S3 URIs outside
    them. The check is purely syntactic (no file system access, symlinks are not followed).
    """
    if not isinstance(uri, str) or not uri.strip():
        return "empty uri"
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return "uri is not valid UTF-8"
    if _has_control(uri):
        return "uri contains control characters"
    match = _SCHEME_RE.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme and scheme not in ALLOWED_SCHEMES:
        return f"unsupported uri scheme {scheme!r} (allowed: local path, {', '.join(s + '://' for s in ALLOWED_SCHEMES)})"
    rest = uri[len(match.group(0)):] if match else uri
    if scheme == "file":
        host, _, local = rest.partition("/")
        if host not in ("", "localhost"):
            return f"file:// uri names a remote host {host!r}"
        rest = "/" + local
    decoded = unquote(rest) if scheme else rest
    if _has_control(decoded):
        return "uri contains control characters"
    if ".." in re.split(r"[/\\]", decoded):
        return "path traversal ('..') in uri"
    if scheme == "s3":
        bucket, _, key = decoded.partition("/")
        if not bucket or not key.strip("/"):
            return "s3 uri needs a bucket and a key"
    if allowed_roots:
        target = f"s3://{decoded}" if scheme == "s3" else decoded
        if scheme == "s3" or os.path.isabs(target):
            if scheme != "s3":
                target = os.path.normpath(target)
            if not any(_under(target, _normalise_root(r)) for r in allowed_roots):
                return "uri is outside the allowed roots"
    return None


def label_names(entries: Iterable[ManifestEntry]) -> list[str]:
    """Sorted unique label names: the class index of a label is its position in this list."""
    return sorted({e.label for e in entries if e.label is not None})


def label_index(entries: Iterable[ManifestEntry]) -> dict[str, int]:
    """``{label name: class index}`` following :func:`label_names`."""
    return {name: i for i, name in enumerate(label_names(entries))}
