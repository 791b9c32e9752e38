"""Credentials given to a job (S3 keys and session token, the MLflow token, the Ray auth token)
never come back out: not in MLflow params or tags, not in configs saved to disk, not in the job's
stdout/stderr, not in anything else the run or its Ray wrote.

The jobs are the pre-training runs of ``pretrain_faults`` (conftest.py, every launch had the
secrets in its environment) and a sharding job writing to S3 with them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from pipeline.core import io as sio
from pipeline.data.synthetic import generate_synthetic
from tests.reliability.conftest import REPO, SECRETS, Job, secret_env, short_tmp

pytestmark = pytest.mark.reliability


def _leaks(folders: list[Path]) -> list[str]:
    """``file: NAME`` for every secret found in any file below ``folders`` (bytes, any encoding)."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if not path.is_file() or path.is_symlink() or path.is_socket():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    return found


def test_pretrain_runs_leak_no_secret(pretrain_faults: dict[str, Any]) -> None:
    f = pretrain_faults
    for name, value in SECRETS.items():
        assert value not in f["launch1"] + f["launch2"], f"{name} in the job's output"
    # Everything the runs wrote: checkpoints, pretrain.toml, the MLflow database and artifacts,
    # and the session folders (logs, runtime envs) of the two embedded Rays.
    assert (f["run_dir"] / "pretrain.toml").is_file()
    assert _leaks([f["tmp"], *f["ray_tmps"]]) == []
    client = MlflowClient(f["tracking"])
    run = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id)[0]
    logged = " ".join([*run.data.params.values(), *run.data.tags.values(), *run.data.params, *run.data.tags])
    assert run.data.params and not [n for n, v in SECRETS.items() if v in logged]


def test_shard_job_on_s3_leaks_no_secret(s3_server: str, tmp_path: Path) -> None:
    entries = generate_synthetic(tmp_path / "videos", num_per_class=1, classes=["left", "right"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    (tmp_path / "manifest.csv").write_text("uri\n" + "".join(f"{e.uri}\n" for e in entries) + "/nope.mp4\n")
    out = "s3://tubelet/secrets-test"
    ray_tmp = short_tmp("trel-se-")
    job = Job("jobs.shard", ["--set", f"shard.manifest={tmp_path / 'manifest.csv'}", "--set", f"shard.output={out}",
                             "--set", "ray.num_cpus=2"], env=secret_env(ray_tmp))
    try:
        assert job.wait(timeout=240) == 0, job.output[-3000:]
        for name, value in SECRETS.items():
            assert value not in job.output, f"{name} in the job's output"
        fs, root = sio.filesystem(out)
        keys = fs.find(root)
        assert any(k.endswith("index.json") for k in keys) and any("/_state/" in k for k in keys), keys
        written = b"".join(fs.cat_file(k) for k in keys)  # shards, index, quarantine, states, shard.toml
        assert not [n for n, v in SECRETS.items() if v.encode() in written], "a secret in the shard output"
        assert _leaks([ray_tmp, tmp_path]) == []
    finally:
        job.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("job,key", [("jobs.pretrain", "tracking.tracking_uri"), ("jobs.shard", "shard.manifest")])
def test_a_credential_in_a_config_url_is_not_printed_or_saved(job: str, key: str) -> None:
    """``scheme://user:password@host`` in a config value: shown as ``***`` by --print-config (the
    same text the jobs save next to their output and log to MLflow)."""
    secret = SECRETS["MLFLOW_TRACKING_TOKEN"]
    result = subprocess.run([sys.executable, "-m", job, "--print-config", "--set",
                             f"{key}=https://alice:{secret}@store.example/x"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert secret not in result.stdout + result.stderr
    assert "https://***@store.example/x" in result.stdout
