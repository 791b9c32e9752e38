"""The pre-training job for real on CPU: Ray Train workers, DeepSpeed ZeRO over gloo, MLflow, shards.

Runs share one embedded Ray (``ray_local``) and one shard set (synthetic + sample videos).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from jobs.pretrain import run
from pipeline.core.config import load_config
from pipeline.data.sample import sample_videos
from pipeline.data.synthetic import generate_synthetic
from pipeline.models import create_model
from pipeline.models.weights import load_official
from pipeline.orchestration.sharding import ShardSection, shard
from pipeline.train.job_configs import PretrainConfig

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> str:
    root = tmp_path_factory.mktemp("pretrain-data")
    entries = generate_synthetic(root / "synthetic", num_per_class=4, classes=["left", "right", "cw", "ccw"],
                                 frames=16, size=(64, 64), splits={"train": 1.0})
    rows = ["uri,label,split"] + [f"{e.uri},{e.label},train" for e in entries]
    rows += [f"{p},,train" for p in sample_videos()[1:3]]  # two real videos, unlabelled
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = root / "shards"
    index, _ = shard(ShardSection(manifest=str(root / "manifest.csv"), output=str(out), max_short_side=96,
                                  videos_per_shard=6, progress=False))
    assert index["totals"]["samples"] == len(entries) + 2
    return str(out)


def _cfg(shards: str, tmp: Path, name: str, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, REPO / "jobs/configs/pretrain/demo.toml", [
        f"data.shards={shards}", f"run.output={tmp / 'runs'}", f"run.name={name}",
        "model.num_frames=4", "model.img_size=32",
        "data.sampling_rate=2", "data.batch_size=4", "data.repeated_aug=2", "data.num_workers=0",
        "optim.lr=2e-3", "optim.warmup_steps=2", "train.log_every=1", "train.image_every=0",
        f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}", "tracking.system_metrics=false",
        "scaling.num_workers=2", *extra])


def _history(tmp: Path, name: str, metric: str = "loss/train") -> dict[int, float]:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, got {len(runs)}"
    return {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, metric)}


# ZeRO-2 and ZeRO-3 through the whole job; every stage's engine (1, 2, 3) is also checked without Ray
# in test_engine_dist.py. Relaunching by name, a killed worker and another world size on resume are
# checked by tests/reliability (SIGKILL of a worker and of the driver) and the S3 resume tests.
@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_pretrain_and_loss_goes_down(shards: str, tmp_path: Path, stage: int) -> None:
    hybrid: list[str] = []
    if stage == 2:  # hybrid data through the real job: the same videos as two sources, weighted 1:3
        shutil.copytree(shards, tmp_path / "second")
        hybrid = [f"data.sources={shards},{tmp_path / 'second'}", "data.source_weights=1,3"]
    else:  # the views cut and resized on the training device (clips + boxes in the batch) through the real job
        hybrid = ["data.crop_on=device"]
    # MLflow's monitor publishes a sample per whole interval, none for a run shorter than one: this one lasts ~1 s
    cfg = _cfg(shards, tmp_path, f"zero{stage}", f"deepspeed.zero_stage={stage}", "train.steps=24",
               "train.checkpoint_every=24", "train.image_every=12", "tracking.system_metrics=true",
               "tracking.system_metrics_interval=0.2", *hybrid)
    assert run(cfg) == 0
    losses = _history(tmp_path, f"zero{stage}")
    assert sorted(losses) == list(range(1, 25))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (22, 23, 24)) / 3
    assert last < first - 0.02, f"loss did not go down: {first:.4f} -> {last:.4f}"

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlrun = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id)[0]
    assert mlrun.data.params["deepspeed.zero_stage"] == str(stage)
    assert mlrun.data.params["model.name"] == "vit_tiny"
    # the training curves under the prefixes MLflow's chart view shows first (loss/, optim/)
    assert {"loss/train", "optim/lr", "optim/grad_norm", "optim/nonfinite_skipped"} <= set(mlrun.data.metrics)
    assert not {"loss", "lr", "grad_norm"} & set(mlrun.data.metrics)
    for key in ("clips_per_s", "tokens_per_s", "data_wait_frac", "model_flops_per_s"):
        assert key in mlrun.data.metrics, key
    assert any(k.startswith("system/") for k in mlrun.data.metrics), "no MLflow system metrics"
    if stage == 2:  # good samples per source, adding up to the total; the 3x weighted source drew more
        first_source, second = (mlrun.data.metrics[f"data/source/{n}_samples"] for n in ("shards", "second"))
        assert first_source + second == mlrun.data.metrics["data_samples_ok"] and second > first_source > 0
    startup = {k: v for k, v in mlrun.data.metrics.items() if k.startswith("startup/")}
    phases = ("ray", "workers", "engine", "tracking", "first_step", "total")
    assert set(startup) == {f"startup/{p}_s" for p in phases}, startup
    assert sum(startup[f"startup/{p}_s"] for p in phases[:-1]) == pytest.approx(startup["startup/total_s"], abs=0.01)
    assert mlrun.data.tags.get("config_hash") and mlrun.data.tags.get("last_checkpoint_step") == "24"
    images = [a.path for a in client.list_artifacts(mlrun.info.run_id, "images")]
    assert any("reconstruction" in p for p in images), images

    export = tmp_path / "runs" / f"zero{stage}" / "export"
    weights = torch.load(export / "pretrain_fp32.pt")
    model = create_model("vit_tiny", "pretrain", num_frames=4, img_size=32)
    model.load_state_dict(weights)  # consolidated fp32 weights load into a plain model
    official = torch.load(export / "videomae_official.pt")
    report = load_official(create_model("vit_tiny", "pretrain", num_frames=4, img_size=32), official)
    assert not report.missing


def test_continued_pretraining_starts_from_given_weights(shards: str, tmp_path: Path) -> None:
    """Domain-adaptive pre-training: start from weights in the public VideoMAE layout."""
    assert run(_cfg(shards, tmp_path, "source", "train.steps=12", "train.checkpoint_every=12")) == 0
    official = tmp_path / "runs" / "source" / "export" / "videomae_official.pt"
    # Same data seed, so step 1 sees the same batch; a near-zero lr keeps the weights as loaded.
    assert run(_cfg(shards, tmp_path, "continued", "train.steps=1", "train.checkpoint_every=1", "optim.lr=1e-12",
                    "optim.min_blr=0", f"model.init={official}")) == 0
    fresh, continued = _history(tmp_path, "source")[1], _history(tmp_path, "continued")[1]
    assert continued < fresh - 0.02, f"init weights not used: {fresh:.4f} -> {continued:.4f}"
    # After one step at lr 1e-12 the continued run holds exactly what the source run ended with.
    source = torch.load(tmp_path / "runs" / "source" / "export" / "pretrain_fp32.pt")
    after = torch.load(tmp_path / "runs" / "continued" / "export" / "pretrain_fp32.pt")
    assert source.keys() == after.keys()
    for key, value in source.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)
