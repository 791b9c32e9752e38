"""The synthetic motion dataset: deterministic bytes, idempotent reruns, and labels that only
motion reveals (a single frame predicts nothing; frame-to-frame flow predicts the class)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.core.errors import DataError
from pipeline.data.manifest import read_manifest
from pipeline.data.synthetic import (
    MOTIONS,
    generate_synthetic,
    plan_synthetic,
    render_frames,
    render_video,
    split_counts,
)

THIRDS = {"train": 1 / 3, "val": 1 / 3, "test": 1 / 3}
TINY = dict(num_per_class=3, classes=("left", "cw"), frames=6, size=(32, 48), fps=10, seed=7, splits=THIRDS)


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "videos").rglob("*.mp4"))}


def test_bytes_identical_across_runs_and_worker_counts(tmp_path):
    a = generate_synthetic(tmp_path / "a", **TINY)
    generate_synthetic(tmp_path / "b", workers=2, **TINY)
    assert len(a) == 6 and hashes(tmp_path / "a") == hashes(tmp_path / "b")
    c = generate_synthetic(tmp_path / "c", **{**TINY, "seed": 8})
    assert len(c) == 6 and set(hashes(tmp_path / "c").values()).isdisjoint(hashes(tmp_path / "a").values())


def test_class_subset_keeps_videos(tmp_path):
    generate_synthetic(tmp_path / "a", **TINY)
    generate_synthetic(tmp_path / "b", **{**TINY, "classes": ("cw",)})
    ha, hb = hashes(tmp_path / "a"), hashes(tmp_path / "b")
    assert hb and all(ha[k] == v for k, v in hb.items())


def test_manifest_layout_and_decodable(tmp_path):
    entries = generate_synthetic(tmp_path, **TINY)
    assert read_manifest(tmp_path / "manifest.csv") == entries
    assert {(e.label, e.split) for e in entries} == {(c, s) for c in ("left", "cw") for s in ("train", "val", "test")}
    for e in entries:
        assert Path(e.uri) == tmp_path.resolve() / "videos" / e.split / e.label / Path(e.uri).name
    with av.open(entries[0].uri) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6 and frames[0].shape == (32, 48, 3)


def test_rerun_is_idempotent_and_repairs(tmp_path):
    generate_synthetic(tmp_path, **TINY)
    before = hashes(tmp_path)
    victim = tmp_path / sorted(before)[0]
    old = victim.stat().st_mtime_ns - 10**9
    for p in (tmp_path / "videos").rglob("*.mp4"):
        os.utime(p, ns=(old, old))
    victim.write_bytes(b"corrupted")
    generate_synthetic(tmp_path, **TINY)
    assert hashes(tmp_path) == before
    untouched = [p for p in (tmp_path / "videos").rglob("*.mp4") if p != victim]
    assert all(p.stat().st_mtime_ns == old for p in untouched)  # identical files are not rewritten
    (tmp_path / "synthetic.json").unlink()  # without the record every file is re-rendered and compared
    generate_synthetic(tmp_path, **TINY)
    assert all(p.stat().st_mtime_ns == old for p in untouched)


def test_split_counts_and_bad_parameters():
    assert split_counts(10, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 8, "val": 1, "test": 1}
    assert split_counts(3, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 3, "val": 0, "test": 0}
    assert sum(split_counts(7, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == 7
    with pytest.raises(DataError, match="sum to 1"):
        split_counts(3, {"train": 0.5})
    with pytest.raises(DataError, match="choose distinct names"):
        plan_synthetic(2, classes=("left", "sideways"))
    with pytest.raises(DataError, match="even size"):
        plan_synthetic(2, size=(33, 32))


# --------------------------------------------------------------------------------------------
# Only motion carries the label

CLASSES = ("left", "right", "up", "down", "cw", "ccw")


@pytest.fixture(scope="module")
def clips() -> tuple[np.ndarray, np.ndarray]:
    """Grey float clips ``[N, T, H, W]`` and labels, rendered without encoding (fast)."""
    specs = plan_synthetic(16, CLASSES, frames=8, size=(48, 48), splits={"train": 1.0}, seed=3)
    videos = np.stack([render_video(s).astype(np.float32).mean(-1) for s in specs])
    return videos, np.array([CLASSES.index(s.label) for s in specs])


def loo_nearest_centroid(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-class-mean classifier."""
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        means = np.stack([x[keep & (y == c)].mean(0) for c in range(y.max() + 1)])
        correct += int(np.argmin(((means - x[i]) ** 2).sum(1)) == y[i])
    return correct / len(x)


def affine_flow(video: np.ndarray) -> np.ndarray:
    """Least-squares affine optical flow over all frame pairs: (a, b, c, d, e, f) with
    vx = a + b x + c y, vy = d + e x + f y (y pointing down)."""
    h, w = video.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx - w / 2, yy - h / 2
    rows, rhs = [], []
    for a, b in zip(video[:-1], video[1:]):
        gy, gx = np.gradient((a + b) / 2)
        rows.append(np.stack([gx, gx * xx, gx * yy, gy, gy * xx, gy * yy], -1).reshape(-1, 6))
        rhs.append(-(b - a).reshape(-1))
    return np.linalg.lstsq(np.concatenate(rows), np.concatenate(rhs), rcond=None)[0]


@pytest.mark.parametrize("seed", range(3))
def test_first_frame_is_independent_of_the_class(seed):
    # Exact: the label changes no random draw, so the same RNG state gives the same first frame.
    firsts = [render_frames(np.random.default_rng(seed), label, 4, 32, 32)[0] for label in MOTIONS]
    assert all(np.array_equal(firsts[0], f) for f in firsts[1:])
    clip = render_frames(np.random.default_rng(seed), "left", 4, 32, 32)
    assert not np.array_equal(clip[0], clip[-1])


def test_first_frame_does_not_predict_the_class(clips):
    videos, labels = clips
    first = videos[:, 0].reshape(len(videos), 12, 4, 12, 4).mean((2, 4)).reshape(len(videos), -1)
    assert loo_nearest_centroid(first, labels) < 0.35  # chance is 1/6; 96 samples


def test_motion_predicts_the_class(clips):
    videos, labels = clips
    flows = np.stack([affine_flow(v) for v in videos])
    vx, vy, curl = flows[:, 0], flows[:, 3], flows[:, 4] - flows[:, 2]
    predicted = np.select(
        [np.abs(curl) * 10 > np.hypot(vx, vy), np.abs(vx) > np.abs(vy)],
        [np.where(curl > 0, 4, 5), np.where(vx < 0, 0, 1)],
        np.where(vy < 0, 2, 3),
    )
    accuracy = (predicted == labels).mean()
    assert accuracy > 0.8, accuracy


def test_texture_scales_only_the_background():
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    default = render_frames(rng(), "right", 6, 48, 48)
    assert np.array_equal(default, render_frames(rng(), "right", 6, 48, 48, texture=1.0))
    flat, textured = (render_frames(rng(), "right", 6, 48, 48, noise=0.0, texture=t) for t in (0.0, 1.0))
    # Flat: the background is one colour, so the most common colour covers most of the frame ...
    colours, counts = np.unique(flat[0].reshape(-1, 3), axis=0, return_counts=True)
    assert counts.max() > 0.4 * 48 * 48 and len(colours) < len(np.unique(textured[0].reshape(-1, 3), axis=0)) / 4
    # ... and the objects are the same: they move identically over both backgrounds.
    moved = lambda v: np.abs(np.diff(v.astype(np.int16), axis=0)).sum(-1) > 60  # noqa: E731
    assert (moved(flat) == moved(textured)).mean() > 0.97
    assert plan_synthetic(2, ("up",), 4, (32, 32), texture=0.0)[0].texture == 0.0
    with pytest.raises(DataError, match="texture"):
        plan_synthetic(2, ("up",), 4, (32, 32), texture=-1.0)
