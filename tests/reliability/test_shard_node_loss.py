"""A worker node of the cluster dies (SIGKILL to every process of the node) in the middle of a
sharding job: Ray retries the shard tasks and video tasks it was running on the head node, the
job finishes, and its shards, index and quarantine are byte-identical to an uninterrupted run.

The cluster is cluster/local/up.sh's two nodes (one logical CPU each) on this machine; the node
loss is real (raylet, object store and workers of the node all gone at once), only detected
sooner than Ray's defaults (health checks every 0.5 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import ShardSection, shard
from tests.local_cluster import cluster_env, running

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]
UP, DOWN = REPO / "cluster/local/up.sh", REPO / "cluster/local/down.sh"
BIN = Path(sys.executable).parent
SETS = ["shard.videos_per_shard=1", "shard.remux=false", "shard.progress=false"]  # transcode: seconds, not ms


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("node-loss")
    env = cluster_env(root / "cluster", TUBELET_RAY=str(BIN / "ray"), RAY_AUTH_MODE="token",
                      RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
                      RAY_health_check_failure_threshold="3")
    state = root / "cluster"
    try:
        up = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, f"up.sh failed:\n{up.stdout}{up.stderr}"
        exports = dict(line.removeprefix("export ").split("=", 1) for line in (state / "env").read_text().splitlines())
        yield {"env": env, "address": exports["RAY_ADDRESS"], "worker": int((state / "worker.pid").read_text()),
               "root": root}
    finally:
        subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(env["TUBELET_CLUSTER_TMP"], ignore_errors=True)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("node-loss-inputs")
    entries = generate_synthetic(root / "videos", num_per_class=6, classes=["left", "right", "cw"], frames=48,
                                 size=(64, 64), splits={"train": 0.75, "val": 0.25})
    (root / "zero.mp4").write_bytes(b"")
    path = root / "manifest.csv"
    path.write_text("uri,label,split\n" + "".join(f"{e.uri},{e.label},{e.split}\n" for e in entries)
                    + f"{root / 'zero.mp4'},left,train\n")
    return path


def _node_tree(pid: int) -> list[psutil.Process]:
    node = psutil.Process(pid)
    return [node, *node.children(recursive=True)]


def _busy(tree: list[psutil.Process]) -> bool:
    """A shard task or a video task is running on the node."""
    for p in tree:
        try:
            if p.cmdline()[:1] in (["ray::write_shard"], ["ray::ingest_video"]):
                return True
        except psutil.Error:
            continue
    return False


def test_worker_node_killed_mid_job_gives_identical_shards(cluster: dict, manifest: Path, ray_local: None,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "shards"
    env = dict(cluster["env"], RAY_ADDRESS=cluster["address"], RAY_AUTH_MODE="token")
    sets = [f"shard.manifest={manifest}", f"shard.output={out}", *SETS]
    job = subprocess.Popen([sys.executable, "-m", "jobs.shard", *[a for s in sets for a in ("--set", s)]],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_at = None
    try:
        deadline = time.monotonic() + 180
        while killed_at is None:
            assert job.poll() is None, f"the job ended before the node could be killed:\n{job.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no task ever ran on the worker node"
            tree = _node_tree(cluster["worker"])
            committed = list((out / "_state").glob("*.json")) if (out / "_state").is_dir() else []
            if committed and _busy(tree):
                for p in tree:  # the whole node at once, as when a machine goes away
                    try:
                        p.send_signal(signal.SIGKILL)
                    except psutil.Error:
                        pass
                killed_at = len(committed)
            time.sleep(0.01)
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
    assert not running(cluster["worker"]), "the worker node survived its kill"
    assert job.returncode == 0, output[-4000:]
    index = (out / "index.json").read_bytes()
    states = len(list((out / "_state").glob("*.json")))
    assert killed_at < states, "every shard was committed before the kill: nothing was tested"

    straight = tmp_path / "straight"
    shard(ShardSection(manifest=str(manifest), output=str(straight), videos_per_shard=1, remux=False, progress=False))
    assert index == (straight / "index.json").read_bytes()
    assert (out / "quarantine.jsonl").read_bytes() == (straight / "quarantine.jsonl").read_bytes()
    tars = sorted(p.name for p in straight.glob("*.tar"))
    assert sorted(p.name for p in out.glob("*.tar")) == tars
    for name in tars:
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert os.path.getsize(out / "quarantine.jsonl") > 0
