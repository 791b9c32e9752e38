"""Build a manifest (uri, label, split) for one dataset: ``python -m jobs.dataset --config dataset/synthetic``.

Writes ``{output}/manifest.csv``, ``{output}/missing.csv`` (videos the label files name but the
disk lacks), ``{output}/build_report.json`` (counts + skipped rows with reasons) and the resolved
config ``{output}/dataset.toml``, then prints one line per split.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jobs._cli import job_main
from pipeline.core.config import help_field, to_toml
from pipeline.core.errors import DataError
from pipeline.data import builders
from pipeline.data.builders import BuildResult
from pipeline.data.manifest import ManifestEntry, write_manifest
from pipeline.data.sample import sample_manifest
from pipeline.data.synthetic import DEFAULT_CLASSES, generate_synthetic

Kind = Literal["synthetic", "sample", "kinetics", "ssv2", "ucf101", "hmdb51", "folder"]


@dataclass
class DatasetSection:
    kind: Kind = help_field("synthetic", help="which dataset to build a manifest for")
    output: str = help_field("data/synthetic", help="output folder: manifest.csv, missing.csv, build_report.json")
    root: str = help_field("", help="folder holding the videos (kinetics, ssv2, ucf101, hmdb51, folder)")
    annotations: list[str] = help_field(
        [], help="label files: kinetics CSVs; the folder with ssv2 JSONs / ucf101 lists / hmdb51 split files")
    split_number: int = help_field(1, help="official split 1-3 (ucf101, hmdb51)")
    ssv2_splits: list[str] = help_field(["train", "val"], help="ssv2 splits to include (train, val, test)")
    check_exists: bool = help_field(True, help="check that every video exists; missing ones go to missing.csv")
    manifest_name: str = help_field("manifest.csv", help="manifest file name inside output (.csv or .jsonl)")


@dataclass
class SyntheticSection:
    num_per_class: int = help_field(20, help="videos per class, split by the fractions below")
    classes: list[str] = help_field(list(DEFAULT_CLASSES), help="motion classes (left right up down cw ccw grow shrink)")
    frames: int = help_field(32, help="frames per video")
    height: int = help_field(112, help="frame height (even)")
    width: int = help_field(112, help="frame width (even)")
    fps: float = help_field(15.0, help="frames per second")
    seed: int = help_field(0, help="seed: the same seed gives byte-identical videos")
    train: float = help_field(0.8, help="fraction of each class in the train split")
    val: float = help_field(0.1, help="fraction of each class in the val split")
    test: float = help_field(0.1, help="fraction of each class in the test split")
    unlabelled: float = help_field(0.0, help="fraction of each class in the 'unlabelled' split: videos only "
                                             "pre-training reads (data.split = \"unlabelled+train\")")
    workers: int = help_field(1, help="processes rendering + encoding in parallel")
    crf: int = help_field(23, help="H.264 constant rate factor")
    noise: float = help_field(2.0, help="per-frame sensor noise (std, in 0-255 levels)")
    texture: float = help_field(1.0, help="background texture amplitude (0 = flat backgrounds)")


@dataclass
class DatasetJobConfig:
    """Build a dataset manifest (uri, label, split) from a dataset's own label files."""

    dataset: DatasetSection = field(default_factory=DatasetSection)
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)


def _need(value: str | list[str], key: str, kind: str) -> None:
    if not value:
        raise DataError(f"dataset.{key} is required for kind={kind!r}")


def _splits(s: SyntheticSection) -> dict[str, float]:
    splits = {"unlabelled": s.unlabelled} if s.unlabelled else {}
    return {**splits, "train": s.train, "val": s.val, "test": s.test}


def build(cfg: DatasetJobConfig) -> BuildResult:
    """The manifest entries for ``cfg`` (generating the synthetic videos when kind=synthetic)."""
    d, s = cfg.dataset, cfg.synthetic
    if d.kind == "synthetic":
        entries = generate_synthetic(d.output, s.num_per_class, s.classes, s.frames, (s.height, s.width), s.fps,
                                     s.seed, _splits(s), s.workers, s.crf, s.noise, s.texture)
        return builders.make_result(entries, [], [], s.classes)
    if d.kind == "sample":
        return builders.make_result(sample_manifest(), [], [], [])
    _need(d.root, "root", d.kind)
    if d.kind == "folder":
        return builders.build_folder(d.root)
    _need(d.annotations, "annotations", d.kind)
    if d.kind == "kinetics":
        return builders.build_kinetics(d.root, d.annotations, check_exists=d.check_exists)
    if len(d.annotations) != 1:
        raise DataError(f"dataset.annotations for kind={d.kind!r} is one folder, got {d.annotations}")
    if d.kind == "ssv2":
        return builders.build_ssv2(d.root, d.annotations[0], d.ssv2_splits, check_exists=d.check_exists)
    build_split = builders.build_ucf101 if d.kind == "ucf101" else builders.build_hmdb51
    return build_split(d.root, d.annotations[0], d.split_number, check_exists=d.check_exists)


def _write_outputs(cfg: DatasetJobConfig, result: BuildResult) -> Path:
    out = Path(cfg.dataset.output)
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(result.entries, out / cfg.dataset.manifest_name)
    missing = out / "missing.csv"
    if result.missing:
        write_manifest(result.missing, missing)
    elif missing.exists():
        missing.unlink()  # a stale list from an earlier run would contradict this report
    report = {"stats": result.stats, "classes": result.classes,
              "skipped": [{"where": s.where, "reason": s.reason} for s in result.skipped]}
    (out / "build_report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "dataset.toml").write_text(to_toml(cfg))
    return manifest


def summary_lines(entries: list[ManifestEntry]) -> list[str]:
    """One line per split: videos and labels."""
    by_split: dict[str, list[ManifestEntry]] = {}
    for e in entries:
        by_split.setdefault(e.split or "-", []).append(e)
    lines, width = [], max([6, *map(len, by_split)])
    for split, rows in sorted(by_split.items()):
        labels = Counter(e.label for e in rows if e.label is not None)
        lines.append(f"{split:>{width}}: {len(rows):6d} videos, {len(labels):4d} labels"
                     + (f", {min(labels.values())}-{max(labels.values())} per label" if labels else ""))
    return lines


def run(cfg: DatasetJobConfig) -> int:
    result = build(cfg)
    if not result.entries:
        first = f" (first missing: {result.missing[0].uri})" if result.missing else ""
        raise DataError(f"no videos found for kind={cfg.dataset.kind!r}: {len(result.missing)} missing{first}")
    manifest = _write_outputs(cfg, result)
    for line in summary_lines(result.entries):
        print(line)
    print(f"manifest: {manifest} ({len(result.entries)} entries, {len(result.missing)} missing, "
          f"{len(result.skipped)} skipped; see build_report.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(DatasetJobConfig, run, sys.argv[1:], prog="jobs.dataset", default_config="dataset/synthetic"))
