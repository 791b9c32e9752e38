"""Feature extraction for real on CPU: Ray Train workers (and the one-process path), tiny synthetic
shards with labelled and unlabelled videos, weights from a pre-training export."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from jobs import extract as extract_job
from jobs._cli import job_main
from pipeline.core.config import load_config
from pipeline.data.shard_index import ShardIndex
from pipeline.data.synthetic import generate_synthetic
from pipeline.models import create_model
from pipeline.orchestration.sharding import ShardSection, shard
from pipeline.train.extract import pool_views, read_features
from pipeline.train.job_configs import ExtractConfig

REPO = Path(__file__).resolve().parents[2]
CLIPS, CROPS = 2, 2
DIM = create_model("vit_tiny", "classify", device="meta", num_frames=4, img_size=32).spec.embed_dim


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("extract-data")
    entries = generate_synthetic(root / "synthetic", num_per_class=3, classes=["left", "right"], frames=12,
                                 size=(40, 40), splits={"train": 1.0})
    rows = ["uri,label,split"] + [f"{e.uri},{e.label if i % 3 else ''},train" for i, e in enumerate(entries)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")  # every third video unlabelled
    shard(ShardSection(manifest=str(root / "manifest.csv"), output=str(root / "shards"), max_short_side=48,
                       videos_per_shard=2, progress=False))
    export = root / "pretrain_run" / "export"
    export.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(create_model("vit_tiny", "pretrain", num_frames=4, img_size=32).state_dict(), export / "pretrain_fp32.pt")
    return {"root": root, "shards": root / "shards", "pretrain_run": root / "pretrain_run"}


def _cfg(data: dict[str, Path], out: Path, *extra: str) -> ExtractConfig:
    return load_config(ExtractConfig, REPO / "jobs/configs/extract/demo.toml", [
        f"data.shards={data['shards']}", f"run.output={out}", f"model.init={data['pretrain_run']}",
        "model.name=vit_tiny", "model.num_frames=4", "model.img_size=32",
        "data.sampling_rate=2", "data.batch_size=2", "data.num_workers=0", f"data.test_num_clips={CLIPS}",
        f"data.test_num_crops={CROPS}", "tracking.enabled=false", *extra])


def _keys(shards: Path) -> list[str]:
    import tarfile

    keys = set()
    for info in ShardIndex.load(str(shards)).split("train"):
        with tarfile.open(info.url) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar.getmembers()}
    return sorted(keys)


def test_pool_views_clip_major() -> None:
    f = torch.arange(2 * 6 * 1, dtype=torch.float32).view(2, 6, 1)  # 3 clips x 2 crops
    assert pool_views(f, 3, 2, "per_clip")[0, :, 0].tolist() == [0.5, 2.5, 4.5]
    assert pool_views(f, 3, 2, "pooled").shape == (2, 1, 1) and pool_views(f, 3, 2, "pooled")[1, 0, 0] == 8.5


def test_extract_pooled_two_workers_per_clip_one_process_and_deterministic(data: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    keys = _keys(data["shards"])
    assert len(keys) == 6

    # pooled, 2 Ray Train workers, Parquet
    assert extract_job.run(_cfg(data, tmp_path / "pooled", "scaling.num_workers=2")) == 0
    pooled = read_features(str(tmp_path / "pooled"))
    manifest = json.loads((tmp_path / "pooled" / "manifest.json").read_text())
    assert sorted(pooled.keys) == keys, "every video exactly once"
    assert manifest["rows"] == 6 and manifest["dim"] == DIM and manifest["mode"] == "pooled"
    assert manifest["failed_videos"] == 0 and len(manifest["parts"]) == 2
    assert pooled.features.shape == (6, DIM) and pooled.features.dtype == np.float32
    assert np.isfinite(pooled.features).all() and pooled.features.std() > 0
    assert sorted(pooled.labels.tolist()).count(-1) == 2  # the unlabelled videos keep label -1
    assert (tmp_path / "pooled" / "extract.toml").read_text().count("[extract]") == 1

    # the same features from one process (no Ray), NumPy format: independent of the worker count
    assert extract_job.run(_cfg(data, tmp_path / "one", "scaling.num_workers=1", "extract.format=npz")) == 0
    one = read_features(str(tmp_path / "one"))
    assert one.keys == pooled.keys and np.array_equal(one.labels, pooled.labels)
    np.testing.assert_allclose(one.features, pooled.features, rtol=1e-5, atol=1e-5)

    # per_clip through the CLI, twice: num_clips rows per video, bit-identical runs
    for name in ("clip_a", "clip_b"):
        argv = ["--config", "extract/demo", *[f"--set={s}" for s in _overrides(data, tmp_path / name)],
                "--set", "extract.mode=per_clip", "--set", "scaling.num_workers=1"]
        assert job_main(ExtractConfig, extract_job.run, argv, prog="jobs.extract") == 0
    a, b = read_features(str(tmp_path / "clip_a")), read_features(str(tmp_path / "clip_b"))
    assert Counter(a.keys) == {k: CLIPS for k in keys}
    assert sorted(zip(a.keys, a.clips.tolist())) == [(k, c) for k in keys for c in range(CLIPS)]
    assert a.features.shape == (6 * CLIPS, DIM) and np.isfinite(a.features).all()
    assert a.keys == b.keys and np.array_equal(a.features, b.features), "two runs differ"
    # the clips are distinct views, and their mean is the pooled feature (each clip averages the same crop count)
    assert not np.allclose(a.features[0], a.features[1])
    np.testing.assert_allclose(a.features.reshape(6, CLIPS, -1).mean(1), one.features, rtol=1e-4, atol=1e-5)


def _overrides(data: dict[str, Path], out: Path) -> list[str]:
    return [f"data.shards={data['shards']}", f"run.output={out}", f"model.init={data['pretrain_run']}",
            "model.num_frames=4", "model.img_size=32", "data.sampling_rate=2",  # as _cfg (the demo's is the card's)
            "data.batch_size=2", "data.num_workers=0", f"data.test_num_clips={CLIPS}",
            f"data.test_num_crops={CROPS}", "tracking.enabled=false"]


def test_bad_input_is_one_line(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--set", f"data.shards={data['shards']}", "--set", f"run.output={tmp_path}", "--set",
            f"model.init={data['pretrain_run']}", "--set", "model.num_frames=4", "--set", "model.img_size=32",
            "--set", "data.num_frames=8", "--set", "tracking.enabled=false"]
    assert job_main(ExtractConfig, extract_job.run, argv, prog="jobs.extract") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.num_frames is not a key of this job: it follows model.num_frames" in err
