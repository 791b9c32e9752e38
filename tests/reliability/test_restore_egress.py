"""A resume from S3 (moto server) on a new world size: the universal conversion needs every shard,
and only the node's converter downloads them.

The same world size (each rank fetches only its own files plus the shared ones, and the resume
is exact) is checked with S3 shards by
``tests/integration/test_pretrain_remote.py::test_pretrain_with_s3_shards_and_checkpoints_resumes``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.integration.test_pretrain_remote import FETCHED, TINY, _losses, _pretrain

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)


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
