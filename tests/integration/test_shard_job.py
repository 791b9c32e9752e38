"""The sharding job for real: Ray tasks, real videos (sample + synthetic + broken), local and S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import webdataset as wds

from pipeline.core import io as sio
from pipeline.data.sample import sample_videos
from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import ShardSection, format_report, shard
from pipeline.video.decode import decode_frames
from pipeline.video.encode import encode_h264
from tests.unit.video_fixtures import moving_frames, psnr

REPO = Path(__file__).resolve().parents[2]
PSNR_BOUND_DB = 28.0  # crf 23 re-encode of an already compressed, unscaled source


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic labelled videos, the sample videos, and one of each kind of broken input."""
    root = tmp_path_factory.mktemp("inputs")
    entries = generate_synthetic(root / "synthetic", num_per_class=3, classes=["left", "right", "cw"], frames=12,
                                 size=(64, 64), splits={"train": 2 / 3, "val": 1 / 3})
    rows = [(e.uri, e.label, e.split) for e in entries]
    rows += [(str(p), "", "train") for p in sample_videos()[:2]]
    good = (root / "good.mp4")
    good.write_bytes(encode_h264(moving_frames(), 25))
    broken = {
        "missing": root / "missing.mp4",
        "zero": root / "zero.mp4",
        "text": root / "text.mp4",
        "truncated": root / "truncated.mp4",
        "short": root / "short.mp4",
    }
    broken["zero"].write_bytes(b"")
    broken["text"].write_text("this is not a video\n")
    broken["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    broken["short"].write_bytes(encode_h264(moving_frames(t=2), 25))
    rows += [(str(p), "", "train") for p in broken.values()]
    rows += [("../../etc/passwd", "", "train"), (entries[0].uri, entries[0].label, entries[0].split)]  # + duplicate
    lines = ["uri,label,split"] + [",".join(r) for r in rows] + [f"{good},,train,extra"]  # malformed row
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return {"root": root, "manifest": manifest, "inputs": len(rows) + 1, "synthetic": entries,
            "good": len(entries) + 2, "broken": broken}


def _cfg(manifest: str, output: str, **kw) -> ShardSection:
    return ShardSection(manifest=manifest, output=output, videos_per_shard=3, progress=False, **kw)


def _tar_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def local_run(inputs: dict, ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("shards")
    index, report = shard(_cfg(str(inputs["manifest"]), str(out)))
    print(format_report(report, str(out)))
    return {"out": out, "index": index, "report": report}


def test_every_input_is_accounted_for(inputs: dict, local_run: dict) -> None:
    out, index = local_run["out"], local_run["index"]
    totals = index["totals"]
    assert totals["inputs"] == inputs["inputs"]
    assert totals["samples"] == inputs["good"]
    assert totals["samples"] + totals["quarantined"] == totals["inputs"]
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantine) == totals["quarantined"]
    reasons = {Path(q["uri"]).name if q["uri"] else q["line"]: q["reason"] for q in quarantine}
    assert reasons["missing.mp4"] == "missing file"
    assert reasons["zero.mp4"] == "zero bytes"
    assert reasons["text.mp4"].startswith("not a video")
    assert reasons["truncated.mp4"].startswith("truncated or corrupt")
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["passwd"] == "path traversal ('..') in uri"
    assert sum(q["reason"].startswith("manifest row: duplicate of line") for q in quarantine) == 1
    assert sum("expected 3 fields" in q["reason"] for q in quarantine) == 1
    assert index["labels"] == ["cw", "left", "right"]
    assert all(s["bytes"] == (out / s["name"]).stat().st_size for s in index["shards"])
    assert len(index["shards"]) >= 3, "the size target must split the data into several shards"
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_stock_webdataset_reads_every_sample(inputs: dict, local_run: dict) -> None:
    out, index = local_run["out"], local_run["index"]
    urls = [str(out / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == index["totals"]["samples"]
    sources = {e.uri: e for e in inputs["synthetic"]}
    checked = 0
    for s in samples:
        meta = json.loads(s["json"])
        frames = decode_frames(s["mp4"], list(range(meta["num_frames"])), backend="pyav")
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)
        assert min(meta["width"], meta["height"]) <= 320
        if meta["uri"] in sources:
            assert int(s["cls"]) == index["labels"].index(sources[meta["uri"]].label)
            original = decode_frames(meta["uri"], list(range(meta["num_frames"])), backend="pyav")
            assert psnr(frames, original) > PSNR_BOUND_DB
            checked += 1
        else:
            assert "cls" not in s  # unlabelled sample videos carry no class
    assert checked == len(inputs["synthetic"])


def test_rerun_keeps_every_shard_byte_identical(inputs: dict, local_run: dict) -> None:
    before = _tar_hashes(local_run["out"])
    index, report = shard(_cfg(str(inputs["manifest"]), str(local_run["out"])))
    committed = len(list((local_run["out"] / "_state").glob("*.json")))  # with a shard whose videos all failed
    assert committed >= len(before) and report.skipped_shards == committed and report.written_shards == 0
    assert _tar_hashes(local_run["out"]) == before
    assert index == local_run["index"]


def test_interrupted_run_resumes_to_identical_shards(inputs: dict, local_run: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.orchestration.sharding as sharding

    calls = {"n": 0}
    real = sharding._Results.add

    def crash_after_two(self, result):  # the driver dies right after its second shard came back
        real(self, result)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(sharding._Results, "add", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        shard(_cfg(str(inputs["manifest"]), str(tmp_path)))
    committed = len(list((tmp_path / "_state").glob("*.json")))
    assert committed >= 2 and not (tmp_path / "index.json").exists()
    monkeypatch.setattr(sharding._Results, "add", real)
    index, report = shard(_cfg(str(inputs["manifest"]), str(tmp_path)))
    assert report.skipped_shards >= 2 and report.skipped_shards + report.written_shards == len(
        list((tmp_path / "_state").glob("*.json")))
    assert _tar_hashes(tmp_path) == _tar_hashes(local_run["out"])
    assert index == local_run["index"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_corrupted_shard_is_rewritten_on_rerun(inputs: dict, local_run: dict, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(local_run["out"], tmp_path, dirs_exist_ok=True)
    victim = tmp_path / local_run["index"]["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF  # same size, different bytes: only the sha256 check can see it
    victim.write_bytes(bytes(data))
    _, trusting = shard(_cfg(str(inputs["manifest"]), str(tmp_path)))
    assert trusting.written_shards == 0, "the default check (size, no read-back) cannot see a flipped byte"
    _, report = shard(_cfg(str(inputs["manifest"]), str(tmp_path), verify="sha256"))
    assert report.written_shards == 1
    assert _tar_hashes(tmp_path) == _tar_hashes(local_run["out"])


def test_sources_and_shards_on_s3(inputs: dict, ray_local: None, s3_server: str) -> None:
    synthetic = inputs["synthetic"][:4]
    rows = ["uri,label,split"]
    for i, e in enumerate(synthetic):
        uri = f"s3://tubelet/raw/v{i}.mp4"
        sio.write_bytes(uri, Path(e.uri).read_bytes())
        rows.append(f"{uri},{e.label},{e.split}")
    rows.append("s3://tubelet/raw/absent.mp4,left,train")
    sio.write_text("s3://tubelet/raw/manifest.csv", "\n".join(rows) + "\n")
    index, report = shard(_cfg("s3://tubelet/raw/manifest.csv", "s3://tubelet/shards"))
    assert index["totals"]["samples"] == 4 and index["totals"]["quarantined"] == 1
    quarantine = sio.read_text("s3://tubelet/shards/quarantine.jsonl").splitlines()
    assert json.loads(quarantine[0])["reason"] == "missing file"
    count = 0
    for s in index["shards"]:
        data = sio.read_bytes(f"s3://tubelet/shards/{s['name']}")
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            count += sum(m.name.endswith(".mp4") for m in tar.getmembers())
    assert count == 4
    _, again = shard(_cfg("s3://tubelet/raw/manifest.csv", "s3://tubelet/shards"))
    assert again.written_shards == 0 and again.skipped_shards == len(index["shards"])


def _job(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.shard", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,message", [
    (["--set", "shard.bogus=1"], "unknown key 'shard.bogus' in [shard]; valid keys: manifest, output"),
    (["--set", "shard.crf=high"], "shard.crf: expected int, got 'high'"),
    (["--set", "shard.manifest=/nonexistent/m.csv", "--set", "shard.output=OUT"], "manifest /nonexistent/m.csv: not found"),
    (["--set", "shard.manifest=M", "--set", "shard.output=/proc/nope"], "output /proc/nope is not writable"),
])
def test_bad_config_or_paths_fail_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    args = [a.replace("OUT", str(tmp_path / "out")).replace("=M", f"={tmp_path / 'm.csv'}") for a in args]
    (tmp_path / "m.csv").write_text("uri\n/x.mp4\n")
    result = _job(*args)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in result.stderr


def test_unreachable_s3_output_fails_fast_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("uri\n/x.mp4\n")
    result = _job("--set", f"shard.manifest={tmp_path / 'm.csv'}", "--set", "shard.output=s3://tubelet/out",
                  env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "y", "TUBELET_IO_RETRIES": "2", "TUBELET_IO_RETRY_DELAY": "0.1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # retry warnings may precede it
    assert last.startswith("jobs.shard: error: output s3://tubelet/out is not writable")
    assert "unreachable after 2 attempts" in last


def _kill_a_shard_task_while_it_writes(out: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL one worker process running ``write_shard`` (Ray titles it ``ray::write_shard``) once a
    shard's temporary file is on disk: the task dies mid-shard, with its tar half written."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        if list(out.glob(".train-*.tar.*.tmp")):
            for proc in me.children(recursive=True):
                try:
                    if proc.cmdline()[:1] == ["ray::write_shard"]:
                        proc.kill()
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue
        time.sleep(0.005)


def test_a_shard_task_killed_mid_shard_is_retried_to_identical_shards(inputs: dict, local_run: dict,
                                                                      tmp_path: Path) -> None:
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_a_shard_task_while_it_writes, args=(tmp_path, stop, killed), daemon=True)
    killer.start()
    try:
        index, report = shard(_cfg(str(inputs["manifest"]), str(tmp_path), videos_in_flight=1))
    finally:
        stop.set()
        killer.join(timeout=10)
    assert killed, "no shard task was killed while writing: nothing was tested"
    assert report.written_shards == len(list((tmp_path / "_state").glob("*.json")))  # Ray retried it
    assert _tar_hashes(tmp_path) == _tar_hashes(local_run["out"])
    assert index == local_run["index"]
    assert not list(tmp_path.glob(".*.tmp")), "the killed task's temporary file was left behind"


def test_long_videos_become_clips_and_every_source_and_clip_is_accounted_for(ray_local: None, tmp_path: Path) -> None:
    """Through the job: an hour-long source (32x32 at 2 fps) becomes 12 five-minute clips; a source
    shorter than one clip is quarantined; stock WebDataset reads the clips with their ranges."""
    from tests.unit.test_clips import _indexed_source

    hour = _indexed_source(tmp_path / "hour.mp4", 3600)
    short = _indexed_source(tmp_path / "short.mp4", 41)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,label\n{hour},talk\n{short},talk\n")
    out = tmp_path / "shards"
    index, report = shard(ShardSection(manifest=str(manifest), output=str(out), clip_seconds=300, min_clip_seconds=60,
                                       videos_per_shard=2, progress=False))
    totals = index["totals"]
    assert (totals["inputs"], totals["videos"], totals["samples"], totals["quarantined"]) == (2, 1, 12, 1)
    assert totals["encodes"] == {"transcode": 12} and totals["clip_seconds_dropped"] == 0
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["uri"], q["reason"].split(":")[0]) for q in quarantine] == [(str(short), "too short for a clip")]
    metas = [json.loads(s["json"]) for s in wds.WebDataset([str(out / s["name"]) for s in index["shards"]],
                                                            shardshuffle=False)]
    assert sorted((m["start"], m["end"]) for m in metas) == [(300.0 * i, 300.0 * (i + 1)) for i in range(12)]
    assert {m["uri"] for m in metas} == {str(hour)} and all(m["num_frames"] == 600 for m in metas)
    assert len({m["key"] for m in metas}) == 12 and {m["clips"] for m in metas} == {12}
    again, rerun = shard(ShardSection(manifest=str(manifest), output=str(out), clip_seconds=300, min_clip_seconds=60,
                                      videos_per_shard=2, progress=False))
    assert rerun.written_shards == 0 and again == index


def test_a_large_shard_goes_up_in_parts_and_its_etag_guards_the_rerun(s3_server: str) -> None:
    """Past s3fs's multipart threshold (2 x 50 MiB) a shard is uploaded in parts (all or nothing:
    aborted on failure); the state records the multipart ETag, which the default check compares."""
    from pipeline.data.shard_writer import Sample, ShardState, TarShardWriter, verify_shard

    writer = TarShardWriter("s3://tubelet/big", "train-000000.tar")
    payload = os.urandom(101 * 2**20)
    writer.add(Sample("k0", payload, {"uri": "x"}))
    nbytes, sha, etag = writer.publish()
    assert etag.endswith("-3"), etag  # three 50 MiB parts: a multipart upload
    assert sha == hashlib.sha256(sio.read_bytes("s3://tubelet/big/train-000000.tar")).hexdigest()
    state = ShardState("train-000000.tar", "train", 1, nbytes, sha, "fp", "members", etag=etag)
    assert verify_shard("s3://tubelet/big", state)
    other = TarShardWriter("s3://tubelet/big", "train-000000.tar")  # same size, other bytes
    other.add(Sample("k0", payload[::-1], {"uri": "x"}))
    assert other.publish()[0] == nbytes
    assert not verify_shard("s3://tubelet/big", state), "the ETag check missed a replaced object of the same size"


def test_a_video_over_the_time_limit_is_quarantined_and_the_rest_of_its_shard_kept(ray_local: None,
                                                                                  tmp_path: Path) -> None:
    """A shard task ingests its videos inline, each under an alarm of shard.task_timeout: a slow
    video (8000 frames to re-encode, several seconds) is quarantined as timed out; the quick ones
    in the same shard (and the alarm) carry on."""
    from pipeline.video.encode import H264Writer

    slow = tmp_path / "slow.mp4"
    writer = H264Writer(64, 64, 25)
    frame = moving_frames(t=1, h=64, w=64)[0]
    for i in range(8000):
        writer.write(np.roll(frame, i, axis=1))
    slow.write_bytes(writer.finish())
    quick = [tmp_path / f"quick{i}.mp4" for i in range(3)]
    for i, q in enumerate(quick):
        q.write_bytes(encode_h264(moving_frames(t=12, h=48, w=48, seed=i), 25))
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri\n" + "".join(f"{p}\n" for p in [slow, *quick]))
    t0 = time.monotonic()
    index, report = shard(ShardSection(manifest=str(manifest), output=str(tmp_path / "out"), remux=False,
                                       task_timeout=2.0, videos_per_shard=4, progress=False))
    assert index["totals"]["samples"] == 3 and report.written_shards == 1
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["uri"], q["reason"]) for q in quarantine] == [(str(slow), "timed out after 2 s")]
    assert time.monotonic() - t0 < 60
