"""The sharding plan on disk: a manifest of any size read in one pass, in constant memory.

Rows stream from the manifest (local or ``s3://``) into a temporary SQLite database: good rows
with their sample key and split, bad rows with their reason. SQLite finds duplicates (a unique
key), the label names (sorted distinct labels) and the shard order (``split, key``) without the
rows ever being held by the driver, so planning a 10M-row manifest needs tens of MB of memory,
not several GB.

Shard membership is fixed here, from the manifest alone: the good rows of a split, ordered by
key, ``videos_per_shard`` at a time. What a shard holds therefore never depends on what its
videos turn out to contain, on scheduling, or on the cluster's size, and a rerun plans the
same shards.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.core import io as sio
from pipeline.core.errors import DataError, StorageError
from pipeline.data.manifest import ManifestEntry, Reject, iter_manifest, manifest_format
from pipeline.data.shard_writer import sample_key, shard_name

_BATCH = 10_000  # rows per transaction while loading


def _b(text: str | None) -> bytes | None:
    """Text as SQLite stores it here: UTF-8 bytes, lone surrogates kept (a hostile manifest's
    ``"\\udce9"`` must reach the quarantine with its reason, not crash the plan)."""
    return None if text is None else text.encode("utf-8", "surrogatepass")


def _s(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class PlanItem:
    """One good manifest row, as a shard task needs it."""

    line: int
    entry: ManifestEntry
    key: str
    split: str
    label: int | None


@dataclass(frozen=True)
class ShardSpec:
    """One shard to write: its name and the manifest rows it accounts for, in key order."""

    split: str
    index: int
    items: tuple[PlanItem, ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    def members_digest(self) -> str:
        """What the shard is made of (row identity, label, range), independent of line numbers."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.key, it.entry.uri, it.label, it.entry.start, it.entry.end]).encode())
        return h.hexdigest()


def _manifest_lines(uri: str) -> Iterator[str]:
    """The manifest's lines, streamed (S3 in blocks), with a one-line DataError on bad bytes."""
    fs, path = sio.filesystem(uri)
    try:
        fh = sio.retrying(f"read {uri}", lambda: fs.open(path, "rb"))
    except StorageError as exc:
        raise DataError(f"manifest {str(exc).removeprefix('read ')}") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    line_no, offset, pending = 0, 0, ""
    with fh:
        while True:
            try:
                block = fh.read(1 << 20)
            except OSError as exc:
                raise DataError(f"manifest {uri}: read failed: {exc}") from None
            try:
                text = pending + decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = line_no + pending.count("\n") + block[:exc.start].count(b"\n") + 1
                raise DataError(f"manifest {uri}: not UTF-8 text (line {line}, byte {offset + exc.start})") from None
            offset += len(block)
            lines = text.split("\n")
            pending = lines.pop()
            for ln in lines:
                line_no += 1
                yield ln
            if not block:
                break
    if pending:
        yield pending


class ShardPlan:
    """A manifest loaded into SQLite; :meth:`shards` walks the shards in order.

    ``close()`` (or the context manager) deletes the database.
    """

    def __init__(self, manifest: str, default_split: str, videos_per_shard: int) -> None:
        if videos_per_shard < 1:
            raise DataError(f"shard.videos_per_shard must be >= 1, got {videos_per_shard}")
        self.manifest, self.videos_per_shard = manifest, videos_per_shard
        self._dir = tempfile.mkdtemp(prefix="tubelet-plan-")
        self.db = sqlite3.connect(f"{self._dir}/plan.sqlite", isolation_level=None)
        self.db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;
            CREATE TABLE rows (line INTEGER PRIMARY KEY, uri BLOB NOT NULL, label BLOB, split TEXT NOT NULL,
                               start REAL, "end" REAL, key TEXT NOT NULL UNIQUE);
            CREATE TABLE rejects (line INTEGER PRIMARY KEY, uri BLOB NOT NULL, reason BLOB NOT NULL);
        """)
        try:
            self._load(default_split)
            self.db.execute("CREATE INDEX rows_order ON rows (split, key)")
        except BaseException:
            self.close()
            raise
        self.labels = [_s(r[0]) for r in self.db.execute(
            "SELECT DISTINCT label FROM rows WHERE label IS NOT NULL ORDER BY label")]
        self.num_rows = self.db.execute("SELECT count(*) FROM rows").fetchone()[0]
        self.num_rejects = self.db.execute("SELECT count(*) FROM rejects").fetchone()[0]
        self.split_sizes = dict(self.db.execute("SELECT split, count(*) FROM rows GROUP BY split ORDER BY split"))

    def _load(self, default_split: str) -> None:
        rows = iter_manifest(_manifest_lines(self.manifest), manifest_format(self.manifest), self.manifest)
        insert = 'INSERT INTO rows (line, uri, label, split, start, "end", key) VALUES (?, ?, ?, ?, ?, ?, ?)'
        self.db.execute("BEGIN")
        for n, (line, row) in enumerate(rows, 1):
            if isinstance(row, Reject):
                self.db.execute("INSERT INTO rejects VALUES (?, ?, ?)", (line, _b(row.uri), _b(row.reason)))
            else:
                key = sample_key(row)
                try:
                    self.db.execute(insert, (line, _b(row.uri), _b(row.label), row.split or default_split,
                                             row.start, row.end, key))
                except sqlite3.IntegrityError:  # same uri and range as an earlier row: same sample key
                    first = self.db.execute("SELECT line FROM rows WHERE key = ?", (key,)).fetchone()[0]
                    self.db.execute("INSERT INTO rejects VALUES (?, ?, ?)",
                                    (line, _b(row.uri), _b(f"duplicate of line {first}")))
            if n % _BATCH == 0:
                self.db.execute("COMMIT")
                self.db.execute("BEGIN")
        self.db.execute("COMMIT")

    @property
    def workdir(self) -> str:
        """A private temporary folder, deleted with the plan."""
        return self._dir

    @property
    def inputs(self) -> int:
        return self.num_rows + self.num_rejects

    def num_shards(self) -> int:
        return sum(-(-n // self.videos_per_shard) for n in self.split_sizes.values())

    def rejects(self) -> Iterator[Reject]:
        for line, uri, reason in self.db.execute("SELECT line, uri, reason FROM rejects ORDER BY line"):
            yield Reject(line, _s(uri), _s(reason))

    def shards(self) -> Iterator[ShardSpec]:
        """Every shard, split by split in name order, each with its rows in key order."""
        index = {name: i for i, name in enumerate(self.labels)}
        cursor = self.db.execute('SELECT line, uri, label, split, start, "end", key FROM rows ORDER BY split, key')
        split, number, batch = None, 0, []
        for line, uri, label, row_split, start, end, key in cursor:
            if row_split != split or len(batch) == self.videos_per_shard:
                if batch:
                    yield ShardSpec(split, number, tuple(batch))
                number = number + 1 if row_split == split else 0
                split, batch = row_split, []
            label = _s(label)
            entry = ManifestEntry(_s(uri), label, row_split, start, end)
            batch.append(PlanItem(line, entry, key, row_split, index[label] if label is not None else None))
        if batch:
            yield ShardSpec(split, number, tuple(batch))

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ShardPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
