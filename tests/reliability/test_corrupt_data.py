"""Broken shards under a real pre-training job: counted, logged, skipped; past the configured
bound (``data.max_decode_error_fraction``) the job stops with one clear line.

The shard set: three good shards written by ``jobs.shard``, plus a truncated tar, a tar whose
member header is garbage, and a valid tar holding an undecodable video and a sample whose video
has the wrong extension (``.avi``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from jobs._cli import job_main
from jobs.pretrain import run as pretrain_run
from pipeline.train.job_configs import PretrainConfig
from tests.reliability.conftest import REPO, TINY
from tests.unit.shard_fixtures import corrupt_header, sample, truncate, write_tar

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("mlflow_db")]  # mlflow_db: tests/conftest.py


@pytest.fixture(scope="module")
def broken_shards(pretrain_shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken-shards") / "shards"
    shutil.copytree(pretrain_shards, root)
    index = json.loads((root / "index.json").read_text())
    good = [s["name"] for s in index["shards"]]
    shutil.copy(root / good[0], root / "train-000003.tar")
    truncate(root / "train-000003.tar", 0.4)
    shutil.copy(root / good[1], root / "train-000004.tar")
    corrupt_header(root / "train-000004.tar", 3)  # the second sample's first member
    write_tar(root / "train-000005.tar", [
        sample("undecodable", 1) | {"mp4": b"\x00\x00\x00\x18ftypisom" + b"\x17" * 3000},
        {k: v for k, v in sample("wrong_ext", 2).items() if k != "mp4"} | {"avi": sample("x", 2)["mp4"]},
    ])
    for name, n in (("train-000003.tar", 2), ("train-000004.tar", 2), ("train-000005.tar", 2)):
        index["shards"].append({"name": name, "split": "train", "samples": n, "bytes": 0, "sha256": ""})
    (root / "index.json").write_text(json.dumps(index))
    return root


def _args(shards: Path, tmp: Path, name: str, *extra: str) -> list[str]:
    sets = [f"data.shards={shards}", f"run.output={tmp / 'runs'}", f"run.name={name}", "train.steps=4",
            "train.checkpoint_every=4", "train.export=false", f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            "data.error_check_after=4", "scaling.max_failures=0", *TINY, "scaling.num_workers=1", *extra]
    return ["--config", str(REPO / "jobs/configs/pretrain/demo.toml"), *[a for s in sets for a in ("--set", s)]]


def _metrics(tmp: Path, name: str) -> dict[str, Any]:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1
    return dict(runs[0].data.metrics)


def test_errors_below_the_bound_are_counted_and_skipped(broken_shards: Path, ray_local: None,
                                                        tmp_path: Path) -> None:
    rc = job_main(PretrainConfig, pretrain_run, _args(broken_shards, tmp_path, "tolerant",
                                                       "data.max_decode_error_fraction=0.9",
                                                       "data.error_check_after=40"), prog="jobs.pretrain")
    assert rc == 0
    m = _metrics(tmp_path, "tolerant")
    # 4 steps x 4 clips (2 views per video): every shard is read at least once.
    assert m["data_decode_errors"] >= 2, m  # the undecodable video and the .avi sample
    assert m["data_shard_errors"] >= 2 and m["data_samples_lost"] >= 1, m  # truncated + garbage header
    assert m["data_samples_ok"] >= 1
    # ... and logged, with the sample and the reason, by the worker that met them.
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    text = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*"))
    assert "data error: " in text and "undecodable" in text and "wrong_ext" in text


def test_past_the_bound_the_job_stops_with_one_line(broken_shards: Path, ray_local: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # restarts allowed, but a data error would come back: Ray Train must not restart the workers for it
    rc = job_main(PretrainConfig, pretrain_run, _args(broken_shards, tmp_path, "strict",
                                                       "data.max_decode_error_fraction=0.01", "scaling.max_failures=2"),
                  prog="jobs.pretrain")
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert rc == 2, err[-3000:]
    assert last.startswith("jobs.pretrain: error: ") and "Traceback" not in err, last
    # Past the bound, or (when the first samples read are all bad) nothing decodes at all.
    assert "> data.max_decode_error_fraction 1.0%" in last or "every sample failed" in last, last
    # one attempt: each start of the workers without a checkpoint opens an MLflow run of its own
    assert _metrics(tmp_path, "strict") is not None, "the workers were restarted for a data error"
