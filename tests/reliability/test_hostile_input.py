"""Hostile input is refused or quarantined with a reason, and nothing is written outside the output.

- manifests: path traversal (plain and percent-encoded), absolute paths and symlinks leading out
  of ``shard.allowed_roots``, relative paths, other schemes and hosts, control characters,
  names that are not UTF-8;
- videos: headers claiming absurd sizes (decompression bombs in tiny files), more frames than
  the configured limit;
- shards being read: tar members named ``../..`` or with absolute paths.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pipeline.data.loader import EvalDataConfig, eval_loader
from pipeline.orchestration.sharding import ShardSection, shard
from pipeline.video.encode import encode_h264
from tests.unit.shard_fixtures import sample, tiny_mp4, write_index
from tests.unit.video_fixtures import mjpeg_claiming, moving_frames

pytestmark = pytest.mark.reliability


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture()
def hostile(tmp_path: Path) -> dict:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    outside = tmp_path / "private"
    outside.mkdir()
    good = allowed / "good.mp4"
    good.write_bytes(encode_h264(moving_frames(12), 12))
    (outside / "secret.mp4").write_bytes(good.read_bytes())  # a real video, but not ours to read
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "bomb.y4m").write_bytes(b"YUV4MPEG2 W9000 H9000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(1024))
    mjpeg_claiming(allowed / "bomb.avi", 60000)
    (allowed / "long.mp4").write_bytes(encode_h264(moving_frames(40), 12))  # more frames than allowed
    odd = os.fsencode(str(allowed)) + b"/caf\xe9.mp4"  # a Latin-1 file name: not UTF-8
    with open(odd, "wb") as fh:
        fh.write(good.read_bytes())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "relative.mp4").write_bytes(good.read_bytes())
    rows = {
        str(good): None,
        "../../etc/passwd": "path traversal",
        f"{allowed}/../private/secret.mp4": "path traversal",
        f"file://{allowed}/%2e%2e/private/secret.mp4": "path traversal",
        str(outside / "secret.mp4"): "outside the allowed roots",
        "/etc/hostname": "outside the allowed roots",
        str(allowed / "link.mp4"): "outside the allowed roots",  # a symlink out of the root
        "relative.mp4": "outside the allowed roots",  # resolves against some working directory
        "file://evil.example/share/x.mp4": "remote host",
        "http://127.0.0.1:9/x.mp4": "unsupported uri scheme",
        f"{allowed}/\x1b[2Jx.mp4": "control characters",
        os.fsdecode(odd): "not valid UTF-8",
        str(allowed / "bomb.y4m"): "absurd size",
        str(allowed / "bomb.avi"): "",  # any reason: refused before a 60000x60000 frame is decoded
        str(allowed / "long.mp4"): "absurd size",
    }
    manifest = tmp_path / "manifest.jsonl"
    # JSON escapes the undecodable byte as a lone surrogate: the manifest itself stays UTF-8.
    manifest.write_text("".join(json.dumps({"uri": uri, "label": "x"}) + "\n" for uri in rows))
    return {"manifest": manifest, "rows": rows, "allowed": allowed, "cwd": cwd, "out": tmp_path / "out"}


def test_hostile_manifest_rows_are_quarantined_with_reasons(hostile: dict, ray_local: None, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(hostile["cwd"])
    around = tmp_path.parent
    before = _listing(around) - {p for p in _listing(around) if p.startswith(tmp_path.name)}
    index, report = shard(ShardSection(manifest=str(hostile["manifest"]), output=str(hostile["out"]),
                                       allowed_roots=[str(hostile["allowed"])], max_frames=30, progress=False))
    quarantine = {json.loads(line)["uri"]: json.loads(line)["reason"]
                  for line in (hostile["out"] / "quarantine.jsonl").read_text().splitlines()}
    assert index["totals"]["samples"] == 1 and report.quarantined == len(hostile["rows"]) - 1
    for uri, reason in hostile["rows"].items():
        if reason is None:
            assert uri not in quarantine
        else:
            assert uri in quarantine, f"{uri!r} was not refused"
            assert reason in quarantine[uri], (uri, quarantine[uri])
    # Only the output folder was written: no stray file beside it, and the one sample is ours.
    after = _listing(around) - {p for p in _listing(around) if p.startswith(tmp_path.name)}
    assert after == before, f"files appeared outside the test folder: {sorted(after - before)}"
    written = {p.name for p in hostile["out"].iterdir()}
    assert written <= {"train-000000.tar", "index.json", "quarantine.jsonl", "_state"}, written
    with tarfile.open(hostile["out"] / "train-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]  # type: ignore[union-attr]
    assert [m["uri"] for m in metas] == [str(hostile["allowed"] / "good.mp4")]


def test_tar_members_with_unsafe_names_are_counted_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A shard from elsewhere whose members climb out (``../``) or are absolute: refused, counted."""
    shards = tmp_path / "shards"
    shards.mkdir()
    good = sample("good0", 0)
    with tarfile.open(shards / "train-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, s in (("good0", good), ("../../escape", sample("x", 1)), ("/tmp/abs", sample("y", 2))):
            for ext in ("mp4", "json", "cls"):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(s[ext])
                tar.addfile(info, io.BytesIO(s[ext]))
    write_index(shards, [("train-000000.tar", "train", 3)])
    around = _listing(tmp_path.parent)
    cfg = EvalDataConfig(shards=str(shards), num_frames=4, sampling_rate=2, input_size=32, batch_size=4,
                         num_workers=0, test_num_clips=1, test_num_crops=1, max_decode_error_fraction=1.0)
    caplog.set_level("WARNING")
    loader = eval_loader(cfg)
    keys = [k for batch in loader for k in batch["keys"]]
    assert keys == ["good0"]
    assert loader.stats.decode_errors == 2 and loader.stats.seen == 3
    assert sum("unsafe member name" in r for r in loader.stats.reasons) == 2, list(loader.stats.reasons)
    assert _listing(tmp_path.parent) == around, "reading a shard wrote files"
    assert tiny_mp4(0) == good["mp4"]
