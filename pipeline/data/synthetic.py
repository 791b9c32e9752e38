"""A procedural, labelled MOTION dataset: the class is only visible over time.

Each video shows 1-3 textured shapes (circle, square, triangle, cross; random colour, size,
stripe pattern, orientation and position) over a random static textured background (``texture``
scales it; 0 = flat) with a little per-frame sensor noise. The class says how *every* object moves:

    left / right / up / down   translation (random speed, +-15 degrees of heading jitter)
    cw / ccw                   rotation about the object's own centre (random angular speed)
    grow / shrink              scaling about the object's centre (not in the default set)

Objects move on a torus (they leave one edge and come back at the other), so start positions
are uniform whatever the class: a single frame carries no label information, only motion does.

Every video draws from its own RNG seeded by ``(seed, class id, index)``, so the output is
byte-identical across runs, worker counts, and class subsets; files are H.264 via
:func:`pipeline.video.encode.encode_h264` (deterministic). Rendering is vectorised over frames
and pixels; the Python loops are over objects only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pipeline.core.errors import DataError
from pipeline.data.manifest import ManifestEntry, write_manifest
from pipeline.video.encode import encode_h264

log = logging.getLogger(__name__)

# name -> (dx, dy, spin, zoom); the order is the class id used in seeds: append, never reorder.
MOTIONS: dict[str, tuple[int, int, int, int]] = {
    "left": (-1, 0, 0, 0), "right": (1, 0, 0, 0), "up": (0, -1, 0, 0), "down": (0, 1, 0, 0),
    "cw": (0, 0, 1, 0), "ccw": (0, 0, -1, 0), "grow": (0, 0, 0, 1), "shrink": (0, 0, 0, -1),
}
DEFAULT_CLASSES = ("left", "right", "up", "down", "cw", "ccw")
SHAPES = ("circle", "square", "triangle", "cross")
DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
RECORD = "synthetic.json"


@dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one video's bytes."""

    label: str
    index: int
    split: str
    frames: int
    height: int
    width: int
    fps: float
    seed: int
    crf: int
    noise: float
    texture: float = 1.0

    @property
    def relpath(self) -> str:
        return f"videos/{self.split}/{self.label}/{self.label}_{self.index:05d}.mp4"


# --------------------------------------------------------------------------------------------
# Rendering


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid: a blotchy texture, ``[h, w, 3]`` in ~[-1, 1]."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1, 3)).astype(np.float32)
    ys, xs = np.linspace(0, cells, h, dtype=np.float32), np.linspace(0, cells, w, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(rng: np.random.Generator, h: int, w: int, texture: float = 1.0, blotch: float = 40.0,
                grain: float = 12.0) -> tuple[np.ndarray, float]:
    """A static textured background and its mean brightness; ``texture=0`` gives a flat tint.

    The texture (``blotch`` x smooth noise + ``grain`` x pixel noise, scaled by ``texture``) is drawn
    whatever its amplitudes, so the objects drawn after it are the same.
    """
    brightness = float(rng.choice([rng.uniform(30, 100), rng.uniform(155, 225)]))
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    pattern = blotch * _smooth_noise(rng, h, w, int(rng.integers(3, 9))) + grain * rng.uniform(-1, 1, (h, w, 3))
    return (brightness * tint + texture * pattern).astype(np.float32), brightness


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels, < 0 inside) of a shape of radius ``r`` at local (u, v)."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8 * r
    if shape == "triangle":  # equilateral, in-radius r/2: three half-planes
        sides = [np.cos(a) * u + np.sin(a) * v for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) - 0.5 * r
    au, av = np.abs(u), np.abs(v)  # cross: union of two bars
    return np.minimum(np.maximum(au - r, av - r / 3), np.maximum(au - r / 3, av - r))


def _window(centre: np.ndarray, size: int, radius: float) -> np.ndarray:
    """Per-frame pixel indices ``[T, B]`` (wrapping) of a window that covers the object.

    Only pixels within ~1.2 radii can be touched (the farthest corner of any shape is 1.13 r,
    plus 1 px of anti-aliasing), so blending there instead of on the whole frame is exact and
    several times cheaper. A window as large as the frame is the whole frame (no duplicates).
    """
    half = int(math.ceil(1.2 * radius)) + 2
    if 2 * half >= size:
        return np.broadcast_to(np.arange(size, dtype=np.float32), (len(centre), size))
    start = np.floor(centre).astype(np.int64) - half
    return ((start[:, None] + np.arange(2 * half + 1)) % size).astype(np.float32)


def _draw_object(video: np.ndarray, rng: np.random.Generator, motion: tuple[int, int, int, int],
                 bg_brightness: float) -> None:
    """Composite one moving, textured object into ``video`` (``[T, H, W, 3]`` float32) in place."""
    t_len, h, w, _ = video.shape
    side = min(h, w)
    dx, dy, spin, zoom = motion
    t = np.arange(t_len, dtype=np.float32)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    radius0 = rng.uniform(0.09, 0.18) * side
    # Contrast with the background so that every object is visible, whatever its hue.
    level = rng.uniform(150, 240) if bg_brightness < 128 else rng.uniform(20, 100)
    colour = (level * rng.uniform(0.4, 1.0, 3) / 0.7).clip(0, 255).astype(np.float32)
    period, phase = rng.uniform(0.25, 0.6) * radius0, rng.uniform(0, 2 * math.pi)
    cx0, cy0, theta0 = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * math.pi)
    speed, heading = rng.uniform(0.008, 0.022) * side, math.atan2(dy, dx) + rng.uniform(-0.26, 0.26)
    moving = 1.0 if (dx or dy) else 0.0
    cx = cx0 + moving * speed * math.cos(heading) * t
    cy = cy0 + moving * speed * math.sin(heading) * t
    theta = theta0 + spin * math.radians(rng.uniform(3.0, 8.0)) * t  # y points down: + is clockwise
    radius = radius0 * np.exp(zoom * rng.uniform(0.012, 0.025) * t)  # frame 0 is the same for every class
    rows, cols = _window(cy, h, float(radius.max())), _window(cx, w, float(radius.max()))
    # Periodic offsets from the centre: the torus keeps start positions uniform for every class.
    ox = (cols[:, None, :] - cx[:, None, None] + w / 2) % w - w / 2
    oy = (rows[:, :, None] - cy[:, None, None] + h / 2) % h - h / 2
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u, v = c * ox + s * oy, c * oy - s * ox
    r = radius[:, None, None].astype(np.float32)
    alpha = np.clip(0.5 - _sdf(shape, u, v, r), 0.0, 1.0)[..., None]
    shade = (1.0 + 0.35 * np.sin(2 * math.pi * u / (period * r / radius0) + phase))[..., None]
    index = (np.arange(t_len)[:, None, None], rows[:, :, None].astype(np.intp), cols[:, None, :].astype(np.intp))
    patch = video[index]
    video[index] = patch + alpha * (shade * colour - patch)  # alpha blend inside the object's window


def render_frames(rng: np.random.Generator, label: str, frames: int, height: int, width: int,
                  noise: float = 2.0, texture: float = 1.0) -> np.ndarray:
    """Frames uint8 ``[T, H, W, 3]`` of one video drawn from ``rng``.

    The label changes no random draw, only how the drawn objects move: given the same ``rng``
    state, every class renders the same first frame (a test checks this exactly).
    """
    bg, brightness = _background(rng, height, width, texture)
    video = np.repeat(bg[None], frames, axis=0)
    for _ in range(int(rng.integers(1, 4))):
        _draw_object(video, rng, MOTIONS[label], brightness)
    if noise > 0:
        video += noise * rng.standard_normal(video.shape, dtype=np.float32)
    return np.rint(np.clip(video, 0, 255, out=video), out=video).astype(np.uint8)


def render_video(spec: VideoSpec) -> np.ndarray:
    """The frames of one synthetic video, uint8 ``[T, H, W, 3]``, from its own seeded RNG."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, list(MOTIONS).index(spec.label), spec.index]))
    return render_frames(rng, spec.label, spec.frames, spec.height, spec.width, spec.noise, spec.texture)


def encode_video(spec: VideoSpec) -> bytes:
    return encode_h264(render_video(spec), spec.fps, crf=spec.crf)


# --------------------------------------------------------------------------------------------
# Dataset generation


def split_counts(n: int, splits: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` by fractions with the largest-remainder method (counts sum to ``n`` exactly)."""
    total = sum(splits.values())
    if not splits or any(f < 0 for f in splits.values()) or abs(total - 1.0) > 1e-6:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {dict(splits)}")
    raw = {k: n * f for k, f in splits.items()}
    counts = {k: int(math.floor(x)) for k, x in raw.items()}
    for k in sorted(raw, key=lambda k: (counts[k] - raw[k], list(raw).index(k)))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def plan_synthetic(num_per_class: int, classes: Sequence[str] = DEFAULT_CLASSES, frames: int = 32,
                   size: tuple[int, int] = (112, 112), fps: float = 15.0, seed: int = 0,
                   splits: Mapping[str, float] | None = None, crf: int = 23, noise: float = 2.0,
                   texture: float = 1.0) -> list[VideoSpec]:
    """The specs of every video, in a fixed order; nothing is rendered."""
    unknown = [c for c in classes if c not in MOTIONS]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise DataError(f"bad synthetic classes {list(classes)}; choose distinct names from {', '.join(MOTIONS)}")
    h, w = size
    if h % 2 or w % 2 or h < 16 or w < 16 or frames < 2 or num_per_class < 1:
        raise DataError(f"synthetic needs even size >= 16 (got {h}x{w}), frames >= 2 (got {frames}), "
                        f"num_per_class >= 1 (got {num_per_class})")
    counts = split_counts(num_per_class, splits or DEFAULT_SPLITS)
    order = [name for name, k in counts.items() for _ in range(k)]
    if texture < 0:
        raise DataError(f"synthetic background texture must be >= 0, got {texture}")
    return [VideoSpec(label, i, order[i], frames, h, w, float(fps), seed, crf, float(noise), float(texture))
            for label in classes for i in range(num_per_class)]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make(job: tuple[VideoSpec, str]) -> tuple[str, str, str]:
    """Render + write one video unless it is already there; returns (relpath, sha256, status)."""
    spec, out_dir = job
    path = Path(out_dir) / spec.relpath
    data = encode_video(spec)
    digest = hashlib.sha256(data).hexdigest()
    if path.is_file() and _sha256(path) == digest:
        return spec.relpath, digest, "unchanged"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written video
    return spec.relpath, digest, "written"


def _load_record(out_dir: Path, params: dict) -> dict[str, str]:
    """sha256 per file from the last run, when it used the same parameters."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record.get("files", {}) if record.get("params") == params else {}


def generate_synthetic(out_dir: str | os.PathLike[str], num_per_class: int = 20,
                       classes: Sequence[str] = DEFAULT_CLASSES, frames: int = 32,
                       size: tuple[int, int] = (112, 112), fps: float = 15.0, seed: int = 0,
                       splits: Mapping[str, float] | None = None, workers: int = 1, crf: int = 23,
                       noise: float = 2.0, texture: float = 1.0) -> list[ManifestEntry]:
    """Write ``{out_dir}/videos/{split}/{class}/{class}_{i}.mp4`` and ``{out_dir}/manifest.csv``.

    ``size`` is (height, width). Idempotent: a rerun with the same parameters re-hashes existing
    files against ``synthetic.json`` and renders only what is absent or differs; an identical
    file is never rewritten. Returns the manifest entries (absolute paths, sorted).
    """
    out = Path(out_dir).resolve()
    specs = plan_synthetic(num_per_class, classes, frames, size, fps, seed, splits, crf, noise, texture)
    params = {k: v for k, v in asdict(specs[0]).items() if k not in ("label", "index", "split")}
    params.update(classes=list(classes), num_per_class=num_per_class, splits=dict(splits or DEFAULT_SPLITS))
    known = _load_record(out, params)
    files: dict[str, str] = {}
    todo = []
    for spec in specs:
        path = out / spec.relpath
        if spec.relpath in known and path.is_file() and _sha256(path) == known[spec.relpath]:
            files[spec.relpath] = known[spec.relpath]
        else:
            todo.append((spec, str(out)))
    statuses: list[str] = []
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_make, todo, chunksize=max(1, len(todo) // (4 * workers))))
    else:
        results = [_make(job) for job in todo]
    for relpath, digest, status in results:
        files[relpath] = digest
        statuses.append(status)
    log.info("synthetic: %d videos (%d written, %d unchanged, %d verified from record) in %s",
             len(specs), statuses.count("written"), statuses.count("unchanged"), len(specs) - len(todo), out)
    _warn_stale(out, {s.relpath for s in specs})
    entries = [ManifestEntry(str(out / s.relpath), s.label, s.split) for s in specs]
    write_manifest(entries, out / "manifest.csv")
    (out / RECORD).write_text(json.dumps({"params": params, "files": dict(sorted(files.items()))}, indent=1) + "\n")
    return sorted(entries, key=lambda e: (e.split or "", e.uri))


def _warn_stale(out: Path, planned: set[str]) -> None:
    # Videos from an earlier run with other parameters are left alone (they may be someone's
    # data) but said out loud, since they are not in the manifest.
    stale = [p for p in (out / "videos").rglob("*.mp4") if str(p.relative_to(out)) not in planned]
    if stale:
        log.warning("synthetic: %d video(s) under %s are not in this manifest (other parameters?), e.g. %s",
                    len(stale), out / "videos", stale[0])
