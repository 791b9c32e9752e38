"""A resume from S3 (moto server) downloads to each rank only its own files plus the shared ones,
and is still exact.

``python -m jobs.pretrain`` on 2 Ray Train workers (ZeRO-2) runs 6 steps with a checkpoint every 2;
the step-6 checkpoint is then made incomplete, so the relaunch resumes from step 4 and runs steps
5 and 6 again: the same losses, from the files each rank fetched (logged by every rank).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from mlflow import MlflowClient

from pipeline.core import io as sio
from tests.integration.test_pretrain_remote import TINY, _pretrain

FETCHED = re.compile(r"rank (\d+) restore fetched (\d+) of (\d+) files, (\d+) of (\d+) bytes: (\[.*\])")


def _losses(tracking: str, name: str) -> dict[int, list[float]]:
    client = MlflowClient(tracking)
    run = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                             filter_string=f"attributes.run_name = '{name}'")[0]
    out: dict[int, list[float]] = {}
    for m in client.get_metric_history(run.info.run_id, "loss"):
        out.setdefault(m.step, []).append(m.value)
    return out


def test_each_rank_fetches_only_its_files_and_the_resume_is_exact(s3_server: str, pretrain_shards: str,
                                                                  tmp_path: Path) -> None:
    output, tracking = f"s3://tubelet/{uuid.uuid4().hex[:8]}/runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"data.shards={pretrain_shards}", f"run.output={output}", "run.name=egress", "train.steps=6",
            "train.checkpoint_every=2", "train.export=false", "deepspeed.zero_stage=2", "model.drop_path=0.1",
            f"tracking.tracking_uri={tracking}", *TINY]
    _pretrain(*sets)
    run_dir = sio.join(output, "egress")
    newest = [u for u in sio.listdir(run_dir) if u.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
              and sio.exists(sio.join(u, "loop.json")) and json.loads(sio.read_text(sio.join(u, "loop.json")))["step"] == 6]
    assert len(newest) == 1, sio.listdir(run_dir)
    sio.remove(sio.join(newest[0], "files", "rank1.json"))  # as if killed mid-upload: resume from step 4

    job = _pretrain(*sets)
    text = job.stdout + job.stderr
    assert "resumed at step 4" in text
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
    losses = _losses(tracking, "egress")
    assert sorted(losses) == list(range(1, 7))
    for step in (5, 6):  # run before and after the resume: identical
        assert len(losses[step]) == 2 and losses[step][0] == losses[step][1], (step, losses[step])


def test_a_new_world_size_fetches_the_whole_checkpoint_once_per_node(s3_server: str, pretrain_shards: str,
                                                                      tmp_path: Path) -> None:
    """Saved by 1 rank, resumed by 2 on one node: the universal conversion needs every shard, and
    only local rank 0 (the converter) downloads them; rank 1 reads ``loop.json`` alone."""
    output, tracking = f"s3://tubelet/{uuid.uuid4().hex[:8]}/runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"data.shards={pretrain_shards}", f"run.output={output}", "run.name=grow", "train.checkpoint_every=2",
            "train.export=false", f"tracking.tracking_uri={tracking}", *TINY]
    _pretrain(*sets, "train.steps=2", "scaling.num_workers=1")
    job = _pretrain(*sets, "train.steps=3", "scaling.num_workers=2")
    text = job.stdout + job.stderr
    assert "resumed at step 2" in text and "converting to universal" in text
    records = {int(m.group(1)): m for m in FETCHED.finditer(text)}
    assert sorted(records) == [0, 1], text[-3000:]
    assert records[0].group(2) == records[0].group(3) and records[0].group(4) == records[0].group(5)
    assert json.loads(records[1].group(6)) == ["loop.json"]
    assert sorted(_losses(tracking, "grow")) == [1, 2, 3]
