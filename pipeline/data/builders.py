"""Manifest builders that read each dataset's own label files.

Every builder returns a :class:`BuildResult`: the entries whose video exists, the entries whose
video is missing (listed, never dropped silently), rows that could not become entries with the
reason, and counts. URIs are absolute local paths. Malformed label files raise
:class:`DataError` naming ``file:line``; a label file is the ground truth, so guessing past a
broken row would change the dataset.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from pipeline.core.errors import DataError
from pipeline.data.manifest import ManifestEntry

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                 "validation": "val", "test": "test", "testing": "test"}


@dataclass(frozen=True)
class Skipped:
    """A label-file row or a file that did not become an entry, and why."""

    where: str
    reason: str


@dataclass
class BuildResult:
    entries: list[ManifestEntry]
    missing: list[ManifestEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # the dataset's own class order
    stats: dict[str, Any] = field(default_factory=dict)


def make_result(entries: list[ManifestEntry], missing: list[ManifestEntry], skipped: list[Skipped],
                classes: Sequence[str], **extra: Any) -> BuildResult:
    """A result with entries sorted by (split, uri) and the counts every builder reports."""
    key = lambda e: (e.split or "", e.uri)  # noqa: E731
    entries, missing = sorted(entries, key=key), sorted(missing, key=key)
    stats = {"entries": len(entries), "missing": len(missing), "skipped": len(skipped),
             "classes": len(classes), "per_split": dict(sorted(Counter(e.split or "" for e in entries).items())),
             **extra}
    return BuildResult(entries, missing, skipped, list(classes), stats)


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _index_videos(root: Path, extensions: Sequence[str]) -> dict[str, list[Path]]:
    """``{file stem: [paths]}`` for every video under ``root``: one walk instead of a stat per row."""
    if not root.is_dir():
        raise DataError(f"video root not found: {root}")
    index: dict[str, list[Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() in extensions:
                index.setdefault(stem, []).append(Path(dirpath) / name)
    return index


def _pick(paths: list[Path], root: Path, prefer: Sequence[str]) -> Path:
    """Among same-named videos, the one under a preferred folder (e.g. its split), else the first."""
    for p in paths:
        parts = {s.lower() for s in p.relative_to(root).parts[:-1]}
        if any(d.lower() in parts for d in prefer):
            return p
    return paths[0]


# --------------------------------------------------------------------------------------------
# Kinetics


def _kinetics_rows(path: Path) -> Iterable[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(_read_lines(path))
    need = {"youtube_id", "time_start", "time_end", "split"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise DataError(f"{path}:1: header must hold {', '.join(sorted(need))} (and label); got {reader.fieldnames}")
    for row in reader:
        yield f"{path.name}:{reader.line_num}", row


def build_kinetics(root: str | os.PathLike[str], annotations: Sequence[str | os.PathLike[str]],
                   extensions: Sequence[str] = (".mp4", ".mkv", ".webm"), check_exists: bool = True) -> BuildResult:
    """Kinetics-400/600/700 from its CSVs (``label,youtube_id,time_start,time_end,split[,is_cc]``).

    Trimmed clips are named ``{youtube_id}_{start:06d}_{end:06d}.mp4`` and may sit in
    ``{root}/{split}/`` or ``{root}/{split}/{label}/``; the folder tree is indexed once, so either
    layout (and label folders with spaces or underscores) is found. When only the untrimmed
    ``{youtube_id}.mp4`` exists, the entry keeps ``start``/``end`` so the sharder cuts the clip.
    """
    root = Path(root).resolve()
    index = _index_videos(root, extensions) if check_exists else {}
    entries, missing, skipped, classes = [], [], [], set()
    trimmed = untrimmed = 0
    for ann in annotations:
        for where, row in _kinetics_rows(Path(ann)):
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise DataError(f"{where}: time_start/time_end must be numbers, got "
                                f"{row['time_start']!r}, {row['time_end']!r}") from None
            yid, split = (row["youtube_id"] or "").strip(), (row["split"] or "").strip()
            if not yid or split.lower() not in SPLIT_ALIASES:
                raise DataError(f"{where}: bad youtube_id {yid!r} or split {split!r}")
            split = SPLIT_ALIASES[split.lower()]
            label = (row.get("label") or "").strip() or None
            if label is None and split != "test":
                skipped.append(Skipped(where, f"no label for a {split} video"))
                continue
            if label:
                classes.add(label)
            stem = f"{yid}_{start:06d}_{end:06d}"
            prefer = [split, row["split"].strip()]
            if stem in index:
                trimmed += 1
                entries.append(ManifestEntry(str(_pick(index[stem], root, prefer)), label, split))
            elif yid in index:
                untrimmed += 1
                entries.append(ManifestEntry(str(_pick(index[yid], root, prefer)), label, split, float(start), float(end)))
            else:
                entry = ManifestEntry(str(root / split / (label or "") / f"{stem}.mp4"), label, split)
                (missing if check_exists else entries).append(entry)
    return make_result(entries, missing, skipped, sorted(classes), trimmed=trimmed, untrimmed=untrimmed)


# --------------------------------------------------------------------------------------------
# Something-Something v2


def ssv2_label(template: str) -> str:
    """The class name of an SSv2 template: brackets removed, as the official loader does."""
    return template.replace("[", "").replace("]", "")


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


SSV2_FILES = {"train": "train.json", "val": "validation.json", "test": "test.json"}


def build_ssv2(root: str | os.PathLike[str], annotations: str | os.PathLike[str] | None = None,
               splits: Sequence[str] = ("train", "val"), check_exists: bool = True) -> BuildResult:
    """Something-Something v2: ``labels.json`` (name -> id) plus ``train.json``/``validation.json``
    (and optionally the unlabelled ``test.json``) in ``annotations``; videos ``{root}/{id}.webm``."""
    root = Path(root).resolve()
    ann = Path(annotations) if annotations else root
    labels = _load_json(ann / "labels.json")
    if not isinstance(labels, dict):
        raise DataError(f"{ann / 'labels.json'}: expected an object of class name -> id")
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    entries, missing, skipped = [], [], []
    for split in splits:
        if split not in SSV2_FILES:
            raise DataError(f"unknown SSv2 split {split!r}; choose from {', '.join(SSV2_FILES)}")
        path = ann / SSV2_FILES[split]
        items = _load_json(path)
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a list of videos")
        for i, item in enumerate(items):
            where = f"{path.name}[{i}]"
            if not isinstance(item, dict) or not str(item.get("id", "")).strip():
                raise DataError(f"{where}: expected an object with an 'id'")
            label = None
            if split != "test":
                if "template" not in item:
                    raise DataError(f"{where}: labelled split without a 'template'")
                label = ssv2_label(str(item["template"]))
                if label not in labels:
                    skipped.append(Skipped(where, f"label {label!r} is not in labels.json"))
                    continue
            entry = ManifestEntry(str(root / f"{str(item['id']).strip()}.webm"), label, split)
            (entries if not check_exists or Path(entry.uri).is_file() else missing).append(entry)
    return make_result(entries, missing, skipped, classes)


# --------------------------------------------------------------------------------------------
# UCF101 and HMDB51


def _check_split_number(n: int) -> None:
    if n not in (1, 2, 3):
        raise DataError(f"split number must be 1, 2 or 3, got {n}")


def _locate(root: Path, rel: str) -> Path:
    """``root/rel``, or ``root/basename`` for copies that were unpacked flat."""
    nested = root / rel
    flat = root / Path(rel).name
    return flat if not nested.is_file() and flat.is_file() else nested


def build_ucf101(root: str | os.PathLike[str], annotations: str | os.PathLike[str], split_number: int = 1,
                 check_exists: bool = True) -> BuildResult:
    """UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``) + ``trainlist0N.txt`` (``Class/v_x.avi 1``) +
    ``testlist0N.txt`` (``Class/v_x.avi``) from ``annotations``; videos ``{root}/Class/v_x.avi``."""
    _check_split_number(split_number)
    root, ann = Path(root).resolve(), Path(annotations)
    classes: dict[int, str] = {}
    for n, line in enumerate(_read_lines(ann / "classInd.txt"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"classInd.txt:{n}: expected 'index ClassName', got {line.strip()!r}")
        classes[int(parts[0])] = parts[1]
    # The official files disagree on case (HandstandPushups vs HandStandPushups): match loosely.
    by_lower = {name.lower(): name for name in classes.values()}
    entries, missing, skipped = [], [], []
    for split, fname in (("train", f"trainlist0{split_number}.txt"), ("test", f"testlist0{split_number}.txt")):
        for n, line in enumerate(_read_lines(ann / fname), 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{fname}:{n}"
            rel = parts[0].replace("\\", "/")
            folder = rel.split("/")[0] if "/" in rel else ""
            label = by_lower.get(folder.lower())
            if label is None:
                raise DataError(f"{where}: class folder {folder!r} of {rel!r} is not in classInd.txt")
            if len(parts) > 1 and classes.get(int(parts[1]) if parts[1].isdigit() else -1) != label:
                raise DataError(f"{where}: class index {parts[1]} does not match folder {folder!r}")
            entry = ManifestEntry(str(_locate(root, rel)), label, split)
            (entries if not check_exists or Path(entry.uri).is_file() else missing).append(entry)
    return make_result(entries, missing, skipped, [classes[k] for k in sorted(classes)], split_number=split_number)


_HMDB_SPLIT_RE = re.compile(r"^(.+)_test_split([123])\.txt$")
_HMDB_ROLES = {"1": "train", "2": "test"}


def build_hmdb51(root: str | os.PathLike[str], annotations: str | os.PathLike[str], split_number: int = 1,
                 check_exists: bool = True) -> BuildResult:
    """HMDB51: ``{class}_test_split{N}.txt`` files in ``annotations`` with ``video.avi 0|1|2`` rows
    (1 = train, 2 = test, 0 = unused in this split, counted in ``stats['unused']``);
    videos ``{root}/{class}/video.avi``."""
    _check_split_number(split_number)
    root, ann = Path(root).resolve(), Path(annotations)
    if not ann.is_dir():
        raise DataError(f"split folder not found: {ann}")
    files = sorted(p for p in ann.iterdir() if (m := _HMDB_SPLIT_RE.match(p.name)) and m.group(2) == str(split_number))
    if not files:
        raise DataError(f"no *_test_split{split_number}.txt files in {ann}")
    classes = [_HMDB_SPLIT_RE.match(p.name).group(1) for p in files]  # type: ignore[union-attr]
    entries, missing, skipped, unused = [], [], [], 0
    for label, path in zip(classes, files):
        for n, line in enumerate(_read_lines(path), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(f"{path.name}:{n}: expected 'video.avi 0|1|2', got {line.strip()!r}")
            if parts[1] == "0":
                unused += 1
                continue
            entry = ManifestEntry(str(_locate(root, f"{label}/{parts[0]}")), label, _HMDB_ROLES[parts[1]])
            (entries if not check_exists or Path(entry.uri).is_file() else missing).append(entry)
    return make_result(entries, missing, skipped, classes, split_number=split_number, unused=unused)


# --------------------------------------------------------------------------------------------
# Generic folder tree


def build_folder(root: str | os.PathLike[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> BuildResult:
    """``root/class_name/video.ext``, or ``root/{train,val,test}/class_name/video.ext`` when the top
    level holds split folders. Files elsewhere (or with other extensions) are listed as skipped."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"video root not found: {root}")
    top = sorted(p.name for p in root.iterdir() if p.is_dir())
    split_mode = any(name.lower() in SPLIT_ALIASES for name in top)
    entries, skipped, hidden = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).parts
            if name.startswith("."):
                hidden += 1  # .DS_Store and friends: counted, not worth a line each
                continue
            if os.path.splitext(name)[1].lower() not in extensions:
                skipped.append(Skipped(str(path), "not a video extension"))
                continue
            depth = 3 if split_mode else 2
            if len(rel) < depth or (split_mode and rel[0].lower() not in SPLIT_ALIASES):
                skipped.append(Skipped(str(path), "not inside a " + ("split/class" if split_mode else "class") + " folder"))
                continue
            split = SPLIT_ALIASES[rel[0].lower()] if split_mode else None
            entries.append(ManifestEntry(str(path), rel[depth - 2], split))
    classes = sorted({e.label for e in entries if e.label})
    return make_result(entries, [], skipped, classes, hidden=hidden, layout="split/class" if split_mode else "class")
