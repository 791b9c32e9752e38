"""The MLflow tracker against a real SQLite store in tmp_path, and the reconstruction picture."""

import socket
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.core.config import config_hash, help_field
from pipeline.core.net import free_port
from pipeline.infra.tracking import (
    MlflowTracker,
    NullTracker,
    TrackingConfig,
    TrackingError,
    experiment_id_of,
    experiment_ui_url,
    make_tracker,
    reconstruction_grid,
    redact_url,
    resolve_uri,
    run_params,
    safe_params,
)


@dataclass
class StoreSection:
    bucket: str = help_field("s3://ak:sk@minio:9000/data", help="where")
    secret_key: str = help_field("hunter2", help="a secret")


@dataclass
class Job:
    store: StoreSection = field(default_factory=StoreSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@pytest.fixture
def cfg(tmp_path):
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/db/mlflow.db", experiment="unit",
                          system_metrics=False)


def _run(cfg, run_id):
    return MlflowClient(cfg.tracking_uri).get_run(run_id)


def test_params_metrics_tags_image_and_artifacts(cfg, tmp_path):
    extra = tmp_path / "notes.txt"
    extra.write_text("hello")
    with make_tracker(cfg, rank=0).start("r1", params={"train": {"steps": 5}}, tags={"stage": "pretrain"},
                                         config=Job()) as tracker:
        assert isinstance(tracker, MlflowTracker)
        run_id = tracker.run_id
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "grad_norm": None}, step=step)
        tracker.log_image(np.zeros((8, 12, 3), np.uint8), "reconstruction", step=2)
        tracker.log_artifact(extra, "extra")
        tracker.log_dict({"a": 1}, "state.json")
        tracker.set_tags({"checkpoint": "/ckpt/step_3"})
    run = _run(cfg, run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["train.steps"] == "5" and run.data.params["tracking.experiment"] == "tubelet"
    history = MlflowClient(cfg.tracking_uri).get_metric_history(run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.333)]
    assert "grad_norm" not in run.data.metrics
    tags = run.data.tags
    assert tags["stage"] == "pretrain" and tags["checkpoint"] == "/ckpt/step_3"
    assert tags["config_hash"] == config_hash(Job()) and tags["host"] == socket.gethostname()
    assert len(tags.get("mlflow.source.git.commit", "")) == 40  # the repo is a git checkout
    client = MlflowClient(cfg.tracking_uri)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.toml", "extra", "state.json", "images"} <= top
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "images"))
    # Artifacts sit next to the SQLite file, not in the working directory.
    assert (tmp_path / "db" / "artifacts").is_dir()


def test_secrets_never_reach_the_store(cfg):
    tracker = make_tracker(cfg).start(params={"api_token": "tok123", "nested": {"password": "pw"}}, config=Job())
    run_id = tracker.run_id
    tracker.set_tags({"endpoint": "http://user:pass@host:9000"})
    tracker.end()
    run = _run(cfg, run_id)
    saved_toml = open(MlflowClient(cfg.tracking_uri).download_artifacts(run_id, "config.toml")).read()
    everything = str(run.data.params) + str(run.data.tags) + saved_toml
    for secret in ("hunter2", "tok123", "pw'", "sk@", "pass@"):
        assert secret not in everything, secret
    assert run.data.params["store.secret_key"] == "***" and run.data.params["api_token"] == "***"
    assert run.data.params["store.bucket"] == "s3://***@minio:9000/data"


def test_training_runs_log_their_recipe_keys_as_params_and_the_whole_config_as_toml(cfg):
    """MLflow prints every param of a run above its reconstruction picture: a training run's params
    are the keys its config class names (each one a real key), the rest is in config.toml."""
    from pipeline.train.job_configs import EvaluateConfig, FinetuneConfig, PretrainConfig

    for job in (PretrainConfig(), FinetuneConfig()):
        assert set(run_params(job)) == set(type(job).mlflow_params) and len(run_params(job)) <= 12
    assert len(run_params(EvaluateConfig())) > 30  # no list: every key
    job = PretrainConfig()
    job.optim.blr = 3e-4
    tracker = make_tracker(cfg).start("pre", config=job, params={"train": {"videos_per_step": 16}})
    run_id = tracker.run_id
    tracker.end()
    run = _run(cfg, run_id)
    assert set(run.data.params) == {*PretrainConfig.mlflow_params, "train.videos_per_step"}
    assert run.data.params["optim.blr"] == "0.0003" and run.data.params["model.name"] == job.model.name
    saved = open(MlflowClient(cfg.tracking_uri).download_artifacts(run_id, "config.toml")).read()
    assert "blr = 0.0003" in saved and "stage3_prefetch_bucket_size" in saved


def test_safe_params_and_redact_url_rules():
    assert safe_params({"a": {"access_key_id": "AKIA", "token_file": ""}}) == {"a.access_key_id": "***",
                                                                              "a.token_file": ""}
    assert redact_url("see https://u:p@h/x and s3://b/k") == "see https://***@h/x and s3://b/k"
    assert len(safe_params({"long": "x" * 10_000})["long"]) == 6000


def test_child_run_is_nested_under_its_parent(cfg):
    with make_tracker(cfg).start("pipeline") as parent:
        child_cfg = TrackingConfig(**{**cfg.__dict__, "parent_run_id": parent.run_id})
        with make_tracker(child_cfg).start("shard") as child:
            child_id = child.run_id
        parent_id = parent.run_id
    assert _run(cfg, child_id).data.tags["mlflow.parentRunId"] == parent_id
    assert _run(cfg, parent_id).info.status == "FINISHED"
    from mlflow import MlflowClient  # the UI opens the experiment as model training, not GenAI

    experiment = MlflowClient(cfg.tracking_uri).get_experiment_by_name(cfg.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_made_elsewhere_is_marked_as_model_training(cfg):
    """MLflow 3 shows an experiment without a kind (or with one its UI guessed) as GenAI: traces, an
    assistant. Using such an experiment marks it as model training; a kind someone chose is kept."""
    client = MlflowClient(resolve_uri(cfg))
    kinds = {"plain": None, "guessed": "genai_development_inferred", "chosen": "genai_development"}
    for name, kind in kinds.items():
        client.create_experiment(name, tags={"mlflow.experimentKind": kind} if kind else None)
        with make_tracker(TrackingConfig(**{**cfg.__dict__, "experiment": name})).start("a"):
            pass
    found = {name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind") for name in kinds}
    assert found == {"plain": "custom_model_development", "guessed": "custom_model_development",
                     "chosen": "genai_development"}
    # MLflow 3.17's UI follows the page's URL, not the tag: the links printed name the training view
    experiment_id = experiment_id_of(resolve_uri(cfg), "plain")
    assert experiment_id == client.get_experiment_by_name("plain").experiment_id
    assert experiment_ui_url("http://127.0.0.1:5000/", experiment_id) == \
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning&compareRunsMode=CHART"
    assert experiment_id_of(resolve_uri(cfg), "absent") == ""


def test_failed_block_marks_the_run_failed(cfg):
    tracker = make_tracker(cfg).start("boom")
    run_id = tracker.run_id
    with pytest.raises(RuntimeError):
        with tracker:
            raise RuntimeError("x")
    assert _run(cfg, run_id).info.status == "FAILED"


def test_null_tracker_on_other_ranks_and_when_disabled(cfg, tmp_path):
    for tracker in (make_tracker(cfg, rank=1), make_tracker(TrackingConfig(enabled=False, tracking_uri="http://x"))):
        assert isinstance(tracker, NullTracker)
        with tracker.start("r", params={"a": 1}) as t:
            t.log_metrics({"loss": 1.0}, 0)
            t.log_image(np.zeros((2, 2, 3), np.uint8), "img", 0)
            t.log_artifact(tmp_path, "x")
            t.log_text("t", "t.txt")
            t.log_dict({}, "d.json")
            t.set_tags({"a": "b"})
        assert t.run_id is None
    assert not (tmp_path / "db").exists()  # nothing was created for rank 1


def test_logging_before_start_is_an_error(cfg):
    with pytest.raises(TrackingError, match="before start"):
        MlflowTracker(cfg).log_metrics({"loss": 1.0}, 0)


def test_unreachable_server_fails_fast_in_one_line():
    port = free_port()  # nothing listens there
    begin = time.monotonic()
    with pytest.raises(TrackingError) as err:
        make_tracker(TrackingConfig(tracking_uri=f"http://127.0.0.1:{port}", connect_timeout=2.0))
    assert time.monotonic() - begin < 5
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "unreachable" in message


def test_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # relative SQLite paths become absolute: Ray workers run in another working directory
    assert resolve_uri(TrackingConfig()) == f"sqlite:///{tmp_path}/runs/mlflow.db" and (tmp_path / "runs").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_uri(TrackingConfig()) == "http://mlflow:5000"
    assert resolve_uri(TrackingConfig(tracking_uri="sqlite:////x/y.db")) == "sqlite:////x/y.db"


def test_system_metrics_are_logged(cfg):
    cfg.system_metrics, cfg.system_metrics_interval = True, 0.5
    with make_tracker(cfg).start("sys") as tracker:
        run_id = tracker.run_id
        time.sleep(2.0)
    metrics = _run(cfg, run_id).data.metrics
    assert any(k.startswith("system/cpu_utilization") for k in metrics), sorted(metrics)
    assert any(k.startswith("system/system_memory_usage") for k in metrics)


# ---- picture ---------------------------------------------------------------------------------


def test_reconstruction_grid_layout():
    t, h, w = 8, 6, 5
    clips = [np.full((t, h, w, 3), v, np.uint8) for v in (10, 20, 30)]
    clips[0][:, 0, 0, 0] = np.arange(t)  # mark frame numbers in the original
    grid = reconstruction_grid(*clips, frames=4, gap=2)
    assert grid.shape == (3 * h + 4, 4 * w + 6, 3) and grid.dtype == np.uint8
    assert [grid[0, c * (w + 2), 0] for c in range(4)] == [0, 2, 5, 7]  # evenly spaced, first and last
    assert grid[h + 2 + 1, 1, 0] == 20 and grid[2 * (h + 2) + 1, 1, 0] == 30  # rows: orig | masked | recon
    assert (grid[h:h + 2] == 255).all()  # white gap between rows
    assert reconstruction_grid(*[c[:2] for c in clips], frames=4).shape[1] == 2 * w + 2
    assert reconstruction_grid(*[np.zeros((16, h, w, 3), np.uint8)] * 3).shape[1] == 8 * w + 14  # 8 by default


def test_reconstruction_grid_rejects_bad_input():
    good = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        reconstruction_grid(good.astype(np.float32), good, good)
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_grid(good, good[:2], good)
