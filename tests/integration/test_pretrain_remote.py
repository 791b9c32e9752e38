"""Pre-training away from the laptop defaults: with S3 storage. (On the two-node cluster of
``cluster/local/up.sh``: ``tests/integration/test_submit.py``, which shares one cluster between
its jobs.)

Shards on a moto S3 endpoint, Ray Train checkpoints and the exported weights under ``s3://``,
and a relaunch that resumes exactly from the S3 checkpoint, each rank fetching only its files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.core import io as sio
from pipeline.data.synthetic import generate_synthetic

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.num_frames=4", "model.img_size=32",
        "data.sampling_rate=2", "data.batch_size=4", "data.repeated_aug=2", "data.num_workers=0",
        "train.log_every=1", "train.image_every=0", "tracking.system_metrics=false",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1"]


def _manifest(root: Path) -> Path:
    entries = generate_synthetic(root / "videos", num_per_class=2, classes=["left", "right", "cw"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(["uri,label,split"] + [f"{e.uri},{e.label},train" for e in entries]) + "\n")
    return manifest


def _history(tracking_uri: str, name: str, metric: str = "loss/train") -> list[int]:
    """Every logged step of ``metric`` in the MLflow run ``name``, duplicates kept."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, got {len(runs)}"
    return sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, metric))


# --- shards, checkpoints and exported weights on S3 (moto server) --------------------------------

@pytest.fixture(scope="module")
def s3_shards(s3_server: str, ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    from jobs.shard import ShardJobConfig
    from jobs.shard import run as shard_run
    from pipeline.core.config import load_config

    root = tmp_path_factory.mktemp("remote-data")
    out = f"s3://tubelet/{uuid.uuid4().hex[:8]}/shards"
    cfg = load_config(ShardJobConfig, REPO / "jobs/configs/shard/default.toml",
                      [f"shard.manifest={_manifest(root)}", f"shard.output={out}", "shard.progress=false"])
    assert shard_run(cfg) == 0
    assert sio.exists(sio.join(out, "index.json"))
    return out


def _pretrain(*sets: str) -> subprocess.CompletedProcess:
    """``python -m jobs.pretrain`` with its own embedded Ray, started with this process's AWS_* env.

    A subprocess rather than ``run(cfg)`` on ``ray_local``: that Ray may have been started (by an
    earlier test module) before ``s3_server`` set AWS_ENDPOINT_URL, and the Ray Train workers of
    a Ray started by the caller do not get it (see ``RunConfig(worker_runtime_env=...)``).
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    job = subprocess.run([sys.executable, "-m", "jobs.pretrain", "--config", "pretrain/demo",
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, (job.stdout + job.stderr)[-5000:]
    return job


FETCHED = re.compile(r"rank (\d+) restore fetched (\d+) of (\d+) files, (\d+) of (\d+) bytes: (\[.*\])")


def _losses(tracking: str, name: str) -> dict[int, list[float]]:
    """Every logged loss per step (a step run twice, before and after a resume, has two)."""
    client = MlflowClient(tracking)
    run = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                             filter_string=f"attributes.run_name = '{name}'")[0]
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(run.info.run_id, "loss/train"):
        out.setdefault(m.step, []).append(m.value)
    return out


def test_pretrain_with_s3_shards_and_checkpoints_resumes(s3_shards: str, tmp_path: Path) -> None:
    """Shards, checkpoints and the export on S3 (moto server), 2 workers, ZeRO-2: 6 steps with a
    checkpoint every 2; the step-6 checkpoint is then made incomplete (as if killed mid-upload), so
    the relaunch by name resumes from step 4 and runs steps 5 and 6 again, with the same losses,
    from the files each rank fetched: the shared ones and its own, never the other rank's."""
    output, tracking = f"s3://tubelet/{uuid.uuid4().hex[:8]}/runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"data.shards={s3_shards}", f"run.output={output}", "run.name=s3", "train.steps=6",
            "train.checkpoint_every=2", "deepspeed.zero_stage=2", "model.drop_path=0.1",
            f"tracking.tracking_uri={tracking}", *TINY]
    _pretrain(*sets)
    run_dir = sio.join(output, "s3")
    export = sio.join(run_dir, "export", "pretrain_fp32.pt")
    assert sio.exists(export)
    sio.remove(export)
    assert sorted(_losses(tracking, "s3")) == [1, 2, 3, 4, 5, 6]
    newest = [u for u in sio.listdir(run_dir) if u.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
              and sio.exists(sio.join(u, "loop.json")) and json.loads(sio.read_text(sio.join(u, "loop.json")))["step"] == 6]
    assert len(newest) == 1, sio.listdir(run_dir)
    sio.remove(sio.join(newest[0], "files", "rank1.json"))  # as if killed mid-upload: resume from step 4

    job = _pretrain(*sets)
    text = job.stdout + job.stderr
    assert "resumed at step 4" in text
    assert sio.exists(export), "the relaunch exports again"
    records = {int(m.group(1)): m for m in FETCHED.finditer(text)}
    assert sorted(records) == [0, 1], text[-3000:]
    for rank, m in records.items():
        names, other = json.loads(m.group(6)), 1 - rank
        tag = "ds/step00000004"
        assert {"loop.json", f"rng/rank{rank}.pt", f"{tag}/mp_rank_00_model_states.pt",
                f"{tag}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"} <= set(names), names
        assert not [n for n in names if f"rank_{other}_" in n or n.endswith(f"rank{other}.pt")
                    or n.endswith(f"rank{other}.json")], names
        fetched, total = int(m.group(4)), int(m.group(5))
        print(f"rank {rank}: fetched {m.group(2)} of {m.group(3)} files, {fetched} of {total} bytes")
        assert fetched < total
    losses = _losses(tracking, "s3")
    assert sorted(losses) == list(range(1, 7))
    assert all(len(losses[step]) == 1 for step in (1, 2, 3, 4)), "steps before the checkpoint ran again"
    for step in (5, 6):  # run before and after the resume: identical
        assert len(losses[step]) == 2 and losses[step][0] == losses[step][1], (step, losses[step])
