"""The S3 endpoint goes away in the middle of a sharding job that writes to it.

- It comes back on the same port a few seconds later: ``pipeline.core.io`` retries with backoff and
  the job finishes; every shard verifies.
- It stays away: the job stops within its retry budget with a one-line error, and the shards it
  had published are intact and kept by the rerun once the endpoint is back.

A real moto S3 server on 127.0.0.1, stopped and restarted on its port (moto keeps its buckets).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

import pipeline.orchestration.sharding as sharding
from jobs._cli import job_main
from jobs.shard import ShardJobConfig
from jobs.shard import run as shard_run
from pipeline.core import io as sio
from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import ShardSection, shard

pytestmark = pytest.mark.reliability
BUCKET = "outage"


class Endpoint:
    """A moto S3 server that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.url = f"http://{self.host}:{self.port}"
        self.up = True

    def stop(self) -> None:
        self.server.stop()
        self.up = False

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port)
        self.server.start()
        self.up = True


@pytest.fixture()
def endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Endpoint]:
    """This test's own endpoint (the session's one must stay up); short retries to keep it quick."""
    ep = Endpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", ep.url)
    boto3.client("s3", endpoint_url=ep.url).create_bucket(Bucket=BUCKET)
    monkeypatch.setattr(sio, "RETRY_ATTEMPTS", 6)
    monkeypatch.setattr(sio, "RETRY_BASE_DELAY", 0.25)  # waits 0.25, 0.5, 1, 2, 4: about 8 s in all
    monkeypatch.setenv("TUBELET_IO_RETRIES", "6")  # the same for the shard tasks, which do the writing
    monkeypatch.setenv("TUBELET_IO_RETRY_DELAY", "0.25")
    yield ep
    if ep.up:
        ep.stop()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outage-inputs")
    entries = generate_synthetic(root / "videos", num_per_class=3, classes=["left", "right"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    path = root / "manifest.csv"
    path.write_text("uri,label\n" + "".join(f"{e.uri},{e.label}\n" for e in entries))
    return path


def _cut_after_first_shard(ep: Endpoint, monkeypatch: pytest.MonkeyPatch, down_for: float | None) -> list:
    """Take the endpoint down as soon as the driver has the first shard back (one shard task at a
    time, so the next one meets the outage from its first request); bring it back ``down_for``
    seconds later, well within the shard tasks' retry budget."""
    real = sharding._Results.add
    timers: list[threading.Timer] = []

    def add(self: Any, result: Any) -> None:
        real(self, result)
        if ep.up and not timers and self.kept + self.written == 1:
            ep.stop()
            timers.append(threading.Timer(down_for, ep.start) if down_for is not None else threading.Timer(0, bool))
            timers[0].start()

    monkeypatch.setattr(sharding._Results, "add", add)
    return timers


def _verify(prefix: str) -> dict[str, Any]:
    index = json.loads(sio.read_text(f"{prefix}/index.json"))
    for s in index["shards"]:
        data = sio.read_bytes(f"{prefix}/{s['name']}")
        assert len(data) == s["bytes"] and hashlib.sha256(data).hexdigest() == s["sha256"], s["name"]
    assert index["totals"]["samples"] + index["totals"]["quarantined"] == index["totals"]["inputs"]
    return index


def _cfg(manifest: Path, prefix: str) -> ShardSection:
    return ShardSection(manifest=str(manifest), output=prefix, videos_per_shard=1, max_in_flight=1, progress=False)


def test_endpoint_back_on_the_same_port_the_job_finishes(endpoint: Endpoint, manifest: Path, ray_local: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"s3://{BUCKET}/back"
    timers = _cut_after_first_shard(endpoint, monkeypatch, down_for=2.0)
    t0 = time.monotonic()
    index, report = shard(_cfg(manifest, prefix))
    # Five shards were still to be written when the endpoint went down for 2 s: the job got
    # through only by retrying, and cannot have finished before the endpoint was back.
    assert timers, "the job never met the outage: nothing was tested"
    timers[0].join(timeout=60)
    assert time.monotonic() - t0 > 2.0
    assert report.written_shards == index["totals"]["shards"] == 6 and report.samples == 6
    assert _verify(prefix) == index
    _, again = shard(_cfg(manifest, prefix))
    assert again.written_shards == 0 and again.skipped_shards == 6


def test_endpoint_gone_fails_in_one_line_and_loses_nothing(endpoint: Endpoint, manifest: Path, ray_local: None,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"s3://{BUCKET}/gone"
    _cut_after_first_shard(endpoint, monkeypatch, down_for=None)
    t0 = time.monotonic()
    rc = job_main(ShardJobConfig, shard_run, ["--set", f"shard.manifest={manifest}", "--set", f"shard.output={prefix}",
                                              "--set", "shard.videos_per_shard=1", "--set", "shard.max_in_flight=1",
                                              "--set", "shard.progress=false"],
                  prog="jobs.shard")
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("jobs.shard: error: ") and "unreachable after 6 attempts" in last, last
    assert f"endpoint {endpoint.url}" in last and "Traceback" not in err
    # 8 s of backoff (+20% jitter) plus botocore's own quick retries of a refused connection.
    assert elapsed < 60, f"took {elapsed:.0f} s to give up"

    endpoint.start()
    states = sio.listdir(f"{prefix}/_state")
    published = {}
    for uri in states:
        state = json.loads(sio.read_text(uri))
        data = sio.read_bytes(f"{prefix}/{state['name']}")
        assert hashlib.sha256(data).hexdigest() == state["sha256"], f"{state['name']} damaged by the outage"
        published[state["name"]] = state["sha256"]
    assert published, "no shard was published before the endpoint went away"
    index, report = shard(_cfg(manifest, prefix))
    assert report.skipped_shards >= len(published) and report.samples == 6
    assert {s["name"]: s["sha256"] for s in _verify(prefix)["shards"] if s["name"] in published} == published
