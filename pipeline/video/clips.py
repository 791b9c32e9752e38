"""Where to cut a long video into clips: fixed windows, or scene cuts (PySceneDetect).

Only times are decided here (seconds from the stream start, the clock that
:func:`pipeline.video.transcode.transcode` cuts by); cutting is the transcoder's job.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from pipeline.core.errors import VideoError

# Windows and scene bounds are rounded to the microsecond: the precision of sample keys.
_DIGITS = 6
SCENEDETECT_HINT = "pip install -e '.[scenes]' (scenedetect-headless: PySceneDetect on headless OpenCV)"


def _r(t: float) -> float:
    return round(t, _DIGITS)


def fixed_windows(start: float, end: float, clip_seconds: float, min_clip_seconds: float,
                  ) -> tuple[list[tuple[float, float]], float]:
    """``([(s, e), ...], dropped seconds)``: ``[start, end)`` cut into ``clip_seconds`` windows.

    Windows start at ``start + i * clip_seconds``; the last one ends at ``end`` and is kept when at
    least ``min_clip_seconds`` long, else its length is returned as dropped.
    """
    if clip_seconds <= 0:
        raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
    windows: list[tuple[float, float]] = []
    dropped = 0.0
    span = end - start
    if span <= 0:
        return windows, dropped
    # a span that is a whole number of windows up to rounding must not leave a 1e-12 s tail
    count = max(1, math.ceil(span / clip_seconds - 1e-9))
    for i in range(count):
        s = _r(start + i * clip_seconds)
        e = _r(min(start + (i + 1) * clip_seconds, end))
        if e - s >= min_clip_seconds - 1e-9:
            windows.append((s, e))
        else:
            dropped += e - s
    return windows, _r(dropped)


def scene_windows(cuts: list[float], start: float, end: float, clip_seconds: float, min_clip_seconds: float,
                  ) -> tuple[list[tuple[float, float]], float]:
    """Clips from scene ``cuts`` (seconds) within ``[start, end)``: a scene shorter than
    ``min_clip_seconds`` is dropped; one longer than ``clip_seconds`` (when > 0) is cut into fixed
    windows within the scene (:func:`fixed_windows`)."""
    bounds = [start] + sorted(c for c in cuts if start < c < end) + [end]
    windows: list[tuple[float, float]] = []
    dropped = 0.0
    for s, e in zip(bounds, bounds[1:]):
        s, e = _r(s), _r(e)
        if e - s < min_clip_seconds - 1e-9:
            dropped += e - s
        elif clip_seconds > 0 and e - s > clip_seconds:
            inner, lost = fixed_windows(s, e, clip_seconds, min_clip_seconds)
            windows += inner
            dropped += lost
        else:
            windows.append((s, e))
    return windows, _r(dropped)


@functools.lru_cache(maxsize=1)
def scenedetect_missing() -> str | None:
    """None when PySceneDetect (and the OpenCV it needs) imports, else why not."""
    try:
        import scenedetect  # noqa: F401
        from scenedetect.backends.pyav import VideoStreamAv  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or an OpenCV that fails to load its libraries
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def detect_cuts(path: str | Path, start: float, end: float | None, threshold: float) -> list[float]:
    """Scene cuts (seconds from the stream start) found by PySceneDetect's content detector
    between ``start`` and ``end`` of the local file ``path``. Decodes that range once (PyAV)."""
    from scenedetect import ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    try:
        video = VideoStreamAv(str(path), suppress_output=True)
        manager = SceneManager()
        manager.add_detector(ContentDetector(threshold=threshold))
        if start > 0:
            video.seek(start)
        manager.detect_scenes(video=video, end_time=end)
        cuts = manager.get_cut_list(show_warning=False)
    except VideoError:
        raise
    except Exception as exc:  # noqa: BLE001 - the library's decode errors, classified here
        raise VideoError(f"scene detection failed: {' '.join(str(exc).split())[:160]}") from exc
    return [_r(c.seconds) for c in cuts]
