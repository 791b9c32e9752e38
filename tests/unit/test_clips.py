"""ingest: clips from long videos (fixed windows, scene cuts), remux instead of a needless transcode."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from pipeline.core import io as sio
from pipeline.core.errors import DataError
from pipeline.data.ingest import Ingested, IngestOptions, check_clip_options, ingest
from pipeline.data.manifest import ManifestEntry
from pipeline.data.shard_writer import sample_key
from pipeline.video import transcode as transcode_mod
from pipeline.video.clips import fixed_windows, scene_windows
from pipeline.video.decode import decode_frames
from pipeline.video.encode import H264Writer, encode_h264
from tests.unit.video_fixtures import VideoFiles, moving_frames, video_files, write_h264_pyav, write_with_pyav  # noqa: F401

FPS = 2  # the long sources: 32x32 at 2 fps, an hour is 7200 frames (~0.3 s to encode, ~3 s to cut)


def _index_frame(i: int) -> np.ndarray:
    """Frame ``i``: its index in binary, one 8x8 grey block per bit (black/white survive crf 23)."""
    bits = (i >> np.arange(16)) & 1
    block = np.where(bits.reshape(4, 4), 235, 16).astype(np.uint8)
    return np.repeat(np.repeat(block, 8, 0), 8, 1)[..., None].repeat(3, -1)


def _frame_index(frame: np.ndarray) -> int:
    bits = frame.mean(-1).reshape(4, 8, 4, 8).mean((1, 3)).reshape(16) > 128
    return int((bits.astype(int) << np.arange(16)).sum())


def _indexed_source(path: Path, seconds: int) -> Path:
    writer = H264Writer(32, 32, FPS)
    for i in range(seconds * FPS):
        writer.write(_index_frame(i))
    path.write_bytes(writer.finish())
    return path


@pytest.fixture(scope="module")
def long_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("long")
    return {s: _indexed_source(d / f"long{s}.mp4", s) for s in (3600, 3630, 41, 3)}


def _spans(result: Ingested) -> list[tuple[float, float]]:
    return [(s.meta["start"], s.meta["end"]) for s in result.samples]


# --------------------------------------------------------------------------------------------
# Fixed clips


class _CountingContainer:
    """Stands in for the input container in ``_clip_frames``: counts the frames it decodes."""

    def __init__(self, container: av.container.InputContainer, counter: list[int]) -> None:
        self._container, self._counter = container, counter

    def seek(self, *args, **kwargs):
        return self._container.seek(*args, **kwargs)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counter[0] += 1
            yield frame


def test_hour_long_source_is_cut_into_fixed_clips(long_sources: dict[int, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = long_sources[3600]
    decoded = [0]
    clip_frames = transcode_mod._clip_frames
    monkeypatch.setattr(transcode_mod, "_clip_frames",
                        lambda container, *a: clip_frames(_CountingContainer(container, decoded), *a))
    uri = str(src)
    # max_frames bounds each clip (600 frames), not the 7200-frame source
    opts = IngestOptions(clip_seconds=300, min_clip_seconds=60, max_frames=1000)
    result = ingest(ManifestEntry(uri, label="a", split="train"), "srckey", 3, opts)
    assert isinstance(result, Ingested), result
    assert result.failed == [] and result.dropped_seconds == 0
    assert _spans(result) == [(300.0 * i, 300.0 * (i + 1)) for i in range(12)]
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    for i, sample in enumerate(result.samples):
        s, e = 300.0 * i, 300.0 * (i + 1)
        assert sample.key == sample_key(ManifestEntry(uri, start=s, end=e)) == sample.meta["key"]
        assert sample.label == 3
        m = sample.meta
        assert (m["num_frames"], m["clip_index"], m["clips"], m["source_key"]) == (600, i, 12, "srckey")
        assert (m["uri"], m["sha256"], m["label"], m["split"], m["encode"]) == (uri, sha, "a", "train", "transcode")
        assert m["source"]["num_frames"] == 7200
        first, last = decode_frames(sample.mp4, [0, 599], backend="pyav")
        assert (_frame_index(first), _frame_index(last)) == (int(s * FPS), int(e * FPS) - 1)
    # each clip seeks to its start: the source is decoded about once, not 1 + 2 + ... + 12 times
    assert 7200 <= decoded[0] <= 7200 + 12 * 10, decoded[0]


def test_without_clips_the_frame_limit_still_bounds_the_source(long_sources: dict[int, Path]) -> None:
    result = ingest(ManifestEntry(str(long_sources[3600])), "k", None, IngestOptions(max_frames=1000))
    assert result == "absurd size: 7200 frames exceeds limit 1000"


@pytest.mark.parametrize("min_clip, clips, dropped", [(60, 12, 30.0), (20, 13, 0.0)])
def test_tail_is_a_clip_only_when_long_enough(long_sources: dict[int, Path], min_clip: float, clips: int,
                                              dropped: float) -> None:
    opts = IngestOptions(clip_seconds=300, min_clip_seconds=min_clip, max_duration=7200)
    result = ingest(ManifestEntry(str(long_sources[3630])), "k", None, opts)
    assert isinstance(result, Ingested), result
    expected = [(300.0 * i, 300.0 * (i + 1)) for i in range(12)] + ([(3600.0, 3630.0)] if clips == 13 else [])
    assert _spans(result) == expected and result.dropped_seconds == dropped
    assert [s.meta["num_frames"] for s in result.samples] == [600] * 12 + ([60] if clips == 13 else [])
    assert {s.meta["clips"] for s in result.samples} == {clips}
    # the source itself is bounded by max_duration
    assert ingest(ManifestEntry(str(long_sources[3630])), "k", None,
                  IngestOptions(clip_seconds=300)) == "too long: 3630 s > 3600 s limit"


@pytest.mark.parametrize("min_clip, spans, dropped", [
    (60, [(100.0, 400.0), (400.0, 700.0), (700.0, 800.0)], 0.0),
    (150, [(100.0, 400.0), (400.0, 700.0)], 100.0),
])
def test_manifest_range_is_cut_from_its_start(long_sources: dict[int, Path], min_clip: float, spans: list,
                                              dropped: float) -> None:
    uri = str(long_sources[3600])
    entry = ManifestEntry(uri, start=100.0, end=800.0)
    result = ingest(entry, sample_key(entry), None, IngestOptions(clip_seconds=300, min_clip_seconds=min_clip))
    assert isinstance(result, Ingested), result
    assert _spans(result) == spans and result.dropped_seconds == dropped
    assert [s.key for s in result.samples] == [sample_key(ManifestEntry(uri, start=s, end=e)) for s, e in spans]
    for sample, (s, e) in zip(result.samples, spans):
        frames = decode_frames(sample.mp4, [0, sample.meta["num_frames"] - 1], backend="pyav")
        assert [_frame_index(f) for f in frames] == [int(s * FPS), int(e * FPS) - 1]


def test_a_failed_clip_is_recorded_and_the_others_kept(long_sources: dict[int, Path]) -> None:
    uri = str(long_sources[41])
    result = ingest(ManifestEntry(uri), "k", None, IngestOptions(clip_seconds=20, min_clip_seconds=0.5))
    assert isinstance(result, Ingested), result
    assert _spans(result) == [(0.0, 20.0), (20.0, 40.0)]
    assert result.failed == [{"key": sample_key(ManifestEntry(uri, start=40.0, end=41.0)), "start": 40.0,
                              "end": 41.0, "reason": "too short: 2 frames < 4 required"}]
    assert [s.meta["clip_index"] for s in result.samples] == [0, 1] and result.samples[0].meta["clips"] == 3


def test_no_good_clip_quarantines_the_source(long_sources: dict[int, Path]) -> None:
    uri = str(long_sources[3])
    assert ingest(ManifestEntry(uri), "k", None, IngestOptions(clip_seconds=4, min_clip_seconds=4)) \
        == "too short for a clip: 3.0 s < 4.0 s"
    # every clip failed: the first clip's reason
    assert ingest(ManifestEntry(uri), "k", None, IngestOptions(clip_seconds=4, min_clip_seconds=1, min_frames=8)) \
        == "too short: 6 frames < 8 required"
    # and today's reasons are unchanged
    assert ingest(ManifestEntry(uri + ".missing"), "k", None, IngestOptions(clip_seconds=4)) == "missing file"


def test_remote_source_goes_through_one_temporary_file(long_sources: dict[int, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe("/bucket/long.mp4", long_sources[41].read_bytes())
    mem.pipe("/bucket/bad.mp4", b"\x00\x00\x00\x18ftypisom" + bytes(2000))
    opens: list[str] = []

    class Counting:
        def open(self, path: str, mode: str = "rb"):
            opens.append(path)
            return mem.open(path, mode)

    monkeypatch.setattr(sio, "filesystem", lambda uri: (Counting(), "/" + uri.removeprefix("s3://")))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    opts = IngestOptions(clip_seconds=20, min_clip_seconds=1.5)
    result = ingest(ManifestEntry("s3://bucket/long.mp4"), "k", None, opts)
    assert isinstance(result, Ingested), result
    assert _spans(result) == [(0.0, 20.0), (20.0, 40.0)] and result.dropped_seconds == 1.0
    assert result.samples[0].meta["sha256"] == hashlib.sha256(long_sources[41].read_bytes()).hexdigest()
    assert opens == ["/bucket/long.mp4"] and os.listdir(scratch) == []
    assert ingest(ManifestEntry("s3://bucket/bad.mp4"), "k", None, opts).startswith("truncated or corrupt")
    assert opens[1:] == ["/bucket/bad.mp4"] and os.listdir(scratch) == []


def test_window_arithmetic() -> None:
    assert fixed_windows(0, 3630, 300, 60) == ([(300.0 * i, 300.0 * (i + 1)) for i in range(12)], 30.0)
    assert fixed_windows(0, 0.9, 1.0, 0.5) == ([(0.0, 0.9)], 0.0)
    assert fixed_windows(0.1, 0.7, 0.2, 0.2) == ([(0.1, 0.3), (0.3, 0.5), (0.5, 0.7)], 0.0)
    # 2.1 / 0.3 is 7.000000000000001: seven windows, no empty eighth
    assert fixed_windows(0, 2.1, 0.3, 0) == ([(round(i * 0.3, 6), round((i + 1) * 0.3, 6)) for i in range(7)], 0.0)
    assert scene_windows([2.0, 3.6], 0, 6.0, 1.0, 0.5) == (
        [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.6), (3.6, 4.6), (4.6, 5.6)], 0.4)
    assert scene_windows([2.0, 3.6, 9.0], 1.0, 6.0, 0, 1.7) == ([(2.0, 3.6), (3.6, 6.0)][1:], 2.6)


# --------------------------------------------------------------------------------------------
# Options


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip_mode="shots"), "shard.clip_mode = 'shots': must be one of 'fixed', 'scenes'"),
    (dict(clip_seconds=-1.0), "shard.clip_seconds = -1.0: must be a number of seconds >= 0"),
    (dict(clip_seconds=float("nan")), "shard.clip_seconds = nan: must be a number of seconds >= 0"),
    (dict(min_clip_seconds=-0.5), "shard.min_clip_seconds = -0.5: must be a number of seconds >= 0"),
    (dict(clip_seconds=4.0, min_clip_seconds=5.0), "shard.min_clip_seconds = 5.0 exceeds shard.clip_seconds = 4.0"),
    (dict(clip_seconds=4.0, transcode=False),
     "cutting clips (shard.clip_seconds > 0 or clip_mode = 'scenes') needs shard.transcode = true"),
])
def test_bad_clip_options_fail_before_any_video(kwargs: dict, message: str) -> None:
    opts = IngestOptions(**kwargs)
    with pytest.raises(DataError, match="^" + re.escape(message)):
        check_clip_options(opts)
    with pytest.raises(DataError):
        ingest(ManifestEntry("/nowhere.mp4"), "k", None, opts)


def test_scenes_without_pyscenedetect_fail_before_any_video(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.video import clips

    check_clip_options(IngestOptions(clip_seconds=10))
    monkeypatch.setattr(clips, "scenedetect_missing", lambda: "ModuleNotFoundError: No module named 'scenedetect'")
    check_clip_options(IngestOptions(clip_seconds=10))  # fixed clips do not need it
    with pytest.raises(DataError, match=r"^shard\.clip_mode = 'scenes' needs PySceneDetect: pip install"):
        check_clip_options(IngestOptions(clip_mode="scenes"))


# --------------------------------------------------------------------------------------------
# Scene cuts


def test_scenes_are_cut_at_the_hard_cuts(tmp_path: Path) -> None:
    pytest.importorskip("scenedetect")
    red = (200, 30, 30)
    frames = np.concatenate([moving_frames(50, 64, 64, seed=1), np.full((40, 64, 64, 3), red, np.uint8),
                             255 - moving_frames(60, 64, 64, seed=2)])  # cuts at frames 50 and 90 (2.0 s, 3.6 s)
    src = tmp_path / "cuts.mp4"
    src.write_bytes(encode_h264(frames, 25))
    uri = str(src)

    def run(**kwargs) -> Ingested:
        result = ingest(ManifestEntry(uri), "k", None, IngestOptions(clip_mode="scenes", **kwargs))
        assert isinstance(result, Ingested), result
        return result

    result = run(min_clip_seconds=0.5)
    spans = _spans(result)
    truth = [(0.0, 2.0), (2.0, 3.6), (3.6, 6.0)]
    assert len(spans) == 3 and np.allclose(spans, truth, atol=2 / 25), spans
    assert [s.meta["num_frames"] for s in result.samples] == [50, 40, 60]
    middle = decode_frames(result.samples[1].mp4, [0, 39], backend="pyav")
    assert np.abs(middle.astype(int) - red).max() < 12  # the red scene, whole
    # a scene shorter than min_clip_seconds is dropped; one longer than clip_seconds is cut into windows
    result = run(min_clip_seconds=1.8)
    assert _spans(result) == [(0.0, 2.0), (3.6, 6.0)] and result.dropped_seconds == pytest.approx(1.6)
    result = run(clip_seconds=1.0, min_clip_seconds=0.5)
    assert _spans(result) == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.6), (3.6, 4.6), (4.6, 5.6)]
    assert result.dropped_seconds == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------
# Remux


def _decode_all(source: bytes | Path) -> np.ndarray:
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _h264_with_metadata(path: Path, frames: np.ndarray, creation_time: str) -> Path:
    """An H.264 MP4 (plus an audio stream) whose container states a creation time and a title."""
    with av.open(str(path), mode="w", format="mp4") as out:
        out.metadata.update(creation_time=creation_time, title="holiday")
        stream = out.add_stream("libx264", rate=Fraction(25),
                                options={"crf": "20", "x264-params": "threads=1:mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        audio = out.add_stream("aac", rate=8000)
        audio.layout = "mono"
        for i, f in enumerate(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
            if i % 5 == 0:
                a = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), format="fltp", layout="mono")
                a.sample_rate, a.pts = 8000, i * 320
                for packet in audio.encode(a):
                    out.mux(packet)
        for s in (stream, audio):
            for packet in s.encode():
                out.mux(packet)
    return path


def test_h264_within_limits_is_remuxed_bit_exact_and_deterministic(tmp_path: Path) -> None:
    frames = moving_frames(40, 64, 64)
    a = _h264_with_metadata(tmp_path / "a.mp4", frames, "2024-01-01T00:00:00.000000Z")
    b = _h264_with_metadata(tmp_path / "b.mp4", frames, "2025-06-30T12:00:00.000000Z")
    assert a.read_bytes() != b.read_bytes()
    ra = ingest(ManifestEntry(str(a)), "k", None, IngestOptions())
    assert isinstance(ra, Ingested), ra
    (sample,) = ra.samples
    assert sample.meta["encode"] == "remux"
    assert (sample.meta["num_frames"], sample.meta["width"], sample.meta["codec"]) == (40, 64, "h264")
    assert np.array_equal(_decode_all(sample.mp4), _decode_all(a))  # no re-encode: the very same frames
    again = ingest(ManifestEntry(str(a)), "k", None, IngestOptions()).samples[0].mp4
    other = ingest(ManifestEntry(str(b)), "k", None, IngestOptions()).samples[0].mp4
    assert sample.mp4 == again == other  # only the video packets make the bytes
    with av.open(io.BytesIO(sample.mp4)) as c:
        assert len(c.streams) == 1 and "creation_time" not in c.metadata and "title" not in c.metadata
    assert b"Lavf" not in sample.mp4 and b"holiday" not in sample.mp4
    # transcode off: the bytes as they are
    copied = ingest(ManifestEntry(str(a)), "k", None, IngestOptions(transcode=False)).samples[0]
    assert copied.meta["encode"] == "copy" and copied.mp4 == a.read_bytes()
    # remux off, or a clip range asked for: transcoded
    assert ingest(ManifestEntry(str(a)), "k", None, IngestOptions(remux=False)).samples[0].meta["encode"] == "transcode"
    ranged = ingest(ManifestEntry(str(a), start=0.0, end=1.0), "k", None, IngestOptions()).samples[0]
    assert ranged.meta["encode"] == "transcode" and ranged.meta["num_frames"] == 25


def _non_remuxable(kind: str, d: Path) -> tuple[Path, IngestOptions]:
    frames = moving_frames(30, 64, 64)
    if kind == "larger":
        return write_h264_pyav(d / "larger.mp4", frames, 25), IngestOptions(max_short_side=32)
    if kind == "mpeg4":
        return write_with_pyav(d / "mpeg4.mp4", frames, 25, "mpeg4", "yuv420p"), IngestOptions()
    if kind == "vp9":
        return write_with_pyav(d / "vp9.webm", frames, 25, "libvpx-vp9", "yuv420p", "webm"), IngestOptions()
    if kind == "rotated":
        return write_h264_pyav(d / "rotated.mp4", frames, 25, rotation=90), IngestOptions()
    if kind == "fps":
        return write_h264_pyav(d / "fps.mp4", frames, 25), IngestOptions(fps_cap=10)
    if kind == "yuv444":
        return write_with_pyav(d / "yuv444.mp4", frames, 25, "libx264", "yuv444p"), IngestOptions()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["larger", "mpeg4", "vp9", "rotated", "fps", "yuv444"])
def test_inputs_beyond_the_limits_are_transcoded(kind: str, tmp_path: Path) -> None:
    src, opts = _non_remuxable(kind, tmp_path)
    result = ingest(ManifestEntry(str(src)), "k", None, opts)
    assert isinstance(result, Ingested), result
    meta = result.samples[0].meta
    assert meta["encode"] == "transcode" and meta["codec"] == "h264" and meta["pix_fmt"] == "yuv420p"
    assert meta["rotation"] == 0 and min(meta["width"], meta["height"]) <= opts.max_short_side


def test_a_failed_remux_falls_back_to_transcoding(video_files: VideoFiles, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from pipeline.video import remux

    assert ingest(ManifestEntry(str(video_files.h264)), "k", None, IngestOptions()).samples[0].meta["encode"] == "remux"

    def broken(*args, **kwargs):
        raise RuntimeError("muxer bug")

    monkeypatch.setattr(remux, "remux_video", broken)
    result = ingest(ManifestEntry(str(video_files.h264)), "k", None, IngestOptions())
    assert isinstance(result, Ingested) and result.samples[0].meta["encode"] == "transcode"


@pytest.mark.parametrize("name", ["truncated", "front_moov_cut", "short", "zero", "random", "text", "audio", "missing"])
def test_broken_inputs_keep_their_reasons_with_remux(video_files: VideoFiles, name: str) -> None:  # noqa: F811
    entry = ManifestEntry(str(getattr(video_files, name)))
    with_remux = ingest(entry, "k", None, IngestOptions())
    assert isinstance(with_remux, str) and with_remux == ingest(entry, "k", None, IngestOptions(remux=False))


@pytest.mark.parametrize("damage", ["cut_at_a_packet_end", "last_packet_zeroed"])
def test_damaged_h264_is_not_remuxed(damage: str, tmp_path: Path) -> None:
    """Packets missing (all that remain whole: only the packet count tells), or a last packet that
    does not decode (only the decode check tells): quarantined as transcoding would."""
    src = write_h264_pyav(tmp_path / "front.mp4", moving_frames(40), 25, faststart=True)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    if damage == "cut_at_a_packet_end":
        pos, size = packets[19]
        data = data[: pos + size]
    else:
        pos, size = packets[-1]
        data[pos + 4 : pos + size] = bytes(size - 4)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with_remux = ingest(ManifestEntry(str(bad)), "k", None, IngestOptions())
    assert isinstance(with_remux, str) and with_remux.startswith("truncated or corrupt stream")
    assert with_remux == ingest(ManifestEntry(str(bad)), "k", None, IngestOptions(remux=False))
