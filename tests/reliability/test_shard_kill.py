"""The sharding job (its driver and embedded Ray, all at once) killed with SIGKILL after it
published its first shard, while the next shard was being written (its temporary file is on disk at the kill, or the test fails), then rerun:
every manifest row ends up in exactly one shard or the quarantine, every shard is a valid tar
that matches the index, nothing is duplicated or missing, and the result is byte-identical to
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import _TEMPORARY, ShardSection, shard
from tests.reliability.conftest import Job, freeze, kill_all, secret_env, short_tmp, survivors, thaw

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("shard-kill-inputs")
    entries = generate_synthetic(root / "videos", num_per_class=4, classes=["left", "right", "cw"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    (root / "zero.mp4").write_bytes(b"")
    uris = [e.uri for e in entries] + [str(root / "zero.mp4"), str(root / "missing.mp4")]
    path = root / "manifest.csv"
    path.write_text("uri\n" + "\n".join(uris) + "\n")
    return path, uris


def _job(manifest: Path, out: Path, ray_tmp: Path, log: Path) -> Job:
    # remux off: a transcoded video keeps its shard's temporary file open long enough to be seen and killed
    sets = [f"shard.manifest={manifest}", f"shard.output={out}", "shard.videos_per_shard=1", "shard.remux=false",
            "shard.progress=false", "ray.num_cpus=2"]
    return Job("jobs.shard", [a for s in sets for a in ("--set", s)], env=secret_env(ray_tmp), log=log)


@pytest.fixture(scope="module")
def killed_and_rerun(manifest: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path, _ = manifest
    tmp = tmp_path_factory.mktemp("shard-kill")
    out = tmp / "shards"
    ray_tmp = short_tmp("trel-sh-")
    # A kill that found no shard being written after all (the folder checked while the job was
    # stopped, yet none on disk once it was killed) did not test the rerun on one: start afresh.
    for attempt in range(1, 4):
        shutil.rmtree(out, ignore_errors=True)
        first = _job(path, out, ray_tmp, tmp / f"run1-{attempt}.log")
        published_at_kill, temporaries_at_kill = _kill_while_a_shard_is_written(first, out)
        if any(map(_is_shard_temporary, temporaries_at_kill)):
            break
    second = _job(path, out, ray_tmp, tmp / "run2.log")
    _run_to_end(second, ray_tmp)
    return {"out": out, "published_at_kill": published_at_kill, "temporaries_at_kill": temporaries_at_kill,
            "rerun": second.output, "first": first.output, "ray_tmp": ray_tmp, "attempts": attempt}


def _kill_while_a_shard_is_written(first: Job, out: Path) -> tuple[list[str], list[str]]:
    """SIGKILL ``first`` (the driver and its embedded Ray, all at once, as when the machine goes away)
    after it published a shard, while the next one is being written; the tars and the temporary files
    left in ``out``."""
    try:
        deadline = time.monotonic() + 240
        # the next shard's writer opens as soon as the first is published: kill while it holds a sample
        # a published tar (not just a state: a shard whose one video is quarantined has no tar).
        # The job's whole tree is stopped (SIGSTOP) before the folder is looked at, so the SIGKILL
        # lands on exactly the folder that was checked; if the writer had just published, it runs on.
        while True:
            assert first.proc.poll() is None, ("the job ended before a shard was published with the next one "
                                               f"being written (no temporary file seen):\n{first.output[-3000:]}")
            assert time.monotonic() < deadline, first.output[-3000:]
            first.remember_tree()
            if any(out.glob("*.tar")) and _shard_temporaries(out):
                stopped = freeze(first.proc.pid)
                if _shard_temporaries(out):
                    break
                thaw(stopped)
            time.sleep(0.02)
        # the shard tasks write the shards, so the folder is frozen from here on
        kill_all(stopped)
        first.proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while survivors(first) and time.monotonic() < deadline:  # anything forked in the meantime
            time.sleep(0.5)
        published_at_kill = sorted(p.name for p in out.glob("*.tar"))  # the folder as the rerun finds it
        temporaries_at_kill = _temporaries(out)
    finally:
        first.stop()
    assert not (out / "index.json").exists(), "the job finished before it was killed: nothing was tested"
    return published_at_kill, temporaries_at_kill


def _run_to_end(job: Any, ray_tmp: Any) -> None:
    """Wait for ``job`` (its own embedded Ray under ``ray_tmp``), stop what is left, and require success."""
    try:
        rc = job.wait(timeout=240)
    finally:
        job.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert rc == 0, job.output[-4000:]


def _temporaries(out: Path) -> list[str]:
    """Unpublished files (``.{name}.{8 chars}.tmp``, renamed when published) in the output folder
    and its ``_state`` folder (a state file is written the same way)."""
    folders = [d for d in (out, out / "_state") if d.is_dir()]
    return sorted(p.name for d in folders for p in d.glob(".*") if _TEMPORARY.match(p.name))


def _is_shard_temporary(name: str) -> bool:
    """A train shard's tar being written (``.train-NNNNNN.tar.{8 chars}.tmp``), not a state file's."""
    return name.startswith(".train-") and ".tar." in name


def _shard_temporaries(out: Path) -> list[str]:
    return [t for t in _temporaries(out) if _is_shard_temporary(t)]


def test_the_kill_landed_while_a_shard_was_being_written(killed_and_rerun: dict[str, Any]) -> None:
    """Without an unpublished shard on disk at the kill, the rerun would not be tested on one."""
    temporaries = killed_and_rerun["temporaries_at_kill"]
    assert any(map(_is_shard_temporary, temporaries)), (killed_and_rerun["attempts"], temporaries)
    assert f"removed {len(temporaries)} temporary files left by an interrupted run" in killed_and_rerun["rerun"]


def test_rerun_keeps_the_shards_published_before_the_kill(killed_and_rerun: dict[str, Any]) -> None:
    assert killed_and_rerun["published_at_kill"]
    kept = int(killed_and_rerun["rerun"].split("kept from an earlier run ")[1].split(";")[0])
    assert kept >= 1, killed_and_rerun["rerun"][-2000:]


def test_every_row_in_exactly_one_shard_or_the_quarantine(killed_and_rerun: dict[str, Any],
                                                          manifest: tuple[Path, list[str]]) -> None:
    out = killed_and_rerun["out"]
    index = json.loads((out / "index.json").read_text())
    in_shards: list[str] = []
    for s in index["shards"]:
        data = (out / s["name"]).read_bytes()
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"], s["name"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # a complete, readable tar
            members = tar.getmembers()
            metas = [json.loads(tar.extractfile(m).read()) for m in members if m.name.endswith(".json")]  # type: ignore[union-attr]
        assert len(metas) == s["samples"] == sum(m.name.endswith(".mp4") for m in members)
        assert all(m.isreg() and "/" not in m.name for m in members)
        in_shards += [m["uri"] for m in metas]
    quarantined = [json.loads(line)["uri"] for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(in_shards + quarantined) == sorted(manifest[1]), "a row is missing or duplicated"
    assert len(set(in_shards)) == len(in_shards)
    totals = index["totals"]
    assert totals["inputs"] == len(manifest[1]) == totals["samples"] + totals["quarantined"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in index["shards"])


def test_no_temporary_file_is_left_behind(killed_and_rerun: dict[str, Any]) -> None:
    out = killed_and_rerun["out"]
    strays = [str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file()]
    assert not strays, f"a killed run's temporary files survived the rerun: {strays}"


def test_result_is_byte_identical_to_an_uninterrupted_run(killed_and_rerun: dict[str, Any],
                                                          manifest: tuple[Path, list[str]], ray_local: None,
                                                          tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    shard(ShardSection(manifest=str(manifest[0]), output=str(straight), videos_per_shard=1, remux=False,
                       progress=False))
    out = killed_and_rerun["out"]
    for name in ("index.json", "quarantine.jsonl", *(p.name for p in straight.glob("*.tar"))):
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_a_video_that_crashes_its_process_costs_that_video_only(manifest: tuple[Path, list[str]],
                                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """A video whose ingest kills its process (as a decoder segfault does; injected through
    ``TUBELET_TEST_CRASH_ON_URI``): the shard task dies inline, the driver runs that shard again
    with each video in a task of its own, and only the crashing video is quarantined."""
    from pipeline.orchestration.shard_tasks import CRASH_ENV

    path, uris = manifest
    victim = uris[3]
    tmp = tmp_path_factory.mktemp("shard-crash")
    ray_tmp = short_tmp("trel-cr-")
    sets = [f"shard.manifest={path}", f"shard.output={tmp / 'shards'}", "shard.videos_per_shard=4",
            "shard.progress=false", "ray.num_cpus=2"]
    job = Job("jobs.shard", [a for s in sets for a in ("--set", s)], env={**secret_env(ray_tmp), CRASH_ENV: victim},
              log=tmp / "run.log")
    _run_to_end(job, ray_tmp)
    assert "running its videos isolated" in job.output
    out = tmp / "shards"
    quarantine = {json.loads(line)["uri"]: json.loads(line)["reason"] for line in (out / "quarantine.jsonl").read_text().splitlines()}
    assert quarantine.pop(victim).startswith("worker crashed while processing")
    assert sorted(quarantine) == sorted(uris[-2:])  # the zero-byte and the missing file, as always
    index = json.loads((out / "index.json").read_text())
    assert index["totals"]["samples"] == len(uris) - 3 and index["totals"]["inputs"] == len(uris)
