"""``model.init`` from anywhere: local, ``s3://`` (moto server), ``runs:/`` and ``models:/`` (MLflow
on SQLite), resolved once on the driver; remote weights fetched once per node into its cache."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import uuid
from pathlib import Path

import pytest

from jobs import finetune as finetune_job
from pipeline.core import io as sio
from pipeline.core.errors import TubeletError
from pipeline.train.model_registry import CARD, FINETUNE_INIT_FILES, WEIGHTS, register_model, resolve_init
from tests.integration.test_finetune import _ft, data  # noqa: F401 - the labelled shards fixture

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]


def _put(uri: str, payload: bytes) -> str:
    sio.write_bytes(uri, payload)
    return uri


@pytest.fixture()
def prefix(s3_server: str) -> str:
    return f"s3://tubelet/{uuid.uuid4().hex[:8]}"


def test_header_command_of_vit_b_k400_names_an_s3_run_folder_that_resolves(prefix: str) -> None:
    """The init form of the command in the config's header (an s3:// pre-training run folder)."""
    header = (REPO / "jobs/configs/finetune/vit_b_k400.toml").read_text().split("\n[", 1)[0]
    spec = re.search(r"model\.init=(\S+)", header).group(1)  # type: ignore[union-attr]
    assert spec.startswith("s3://tubelet-runs/")
    ours = spec.replace("s3://tubelet-runs", prefix)  # the same layout, in the moto bucket
    weights = _put(f"{ours}/export/pretrain_fp32.pt", b"w")
    assert resolve_init(ours, None, FINETUNE_INIT_FILES) == finetune_job.resolve_init(ours) == weights
    assert resolve_init(weights) == weights


def test_s3_runs_and_models_inits_resolve_to_one_concrete_uri(prefix: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    folder = f"{prefix}/ft/export/best"  # a model folder on S3, as jobs.finetune writes it
    _put(f"{folder}/{WEIGHTS}", b"w")
    _put(f"{folder}/{CARD}", b"{}")
    assert resolve_init(f"{prefix}/ft", tracking, model_folders=True) == folder  # run folder -> export/best
    assert resolve_init(folder, tracking, FINETUNE_INIT_FILES) == f"{folder}/{WEIGHTS}"

    client = MlflowClient(tracking)
    experiment = client.create_experiment("init", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    version = register_model(tracking, run_id, "tiny", "champion", folder).version  # logs the folder as model/
    logged = tmp_path / "artifacts" / run_id / "artifacts" / "model"
    assert (logged / WEIGHTS).is_file()
    for spec in ("models:/tiny@champion", f"models:/tiny/{version}", f"runs:/{run_id}/model"):
        assert resolve_init(spec, tracking, model_folders=True) == str(logged), spec
        assert resolve_init(spec, tracking, FINETUNE_INIT_FILES) == str(logged / WEIGHTS), spec
    assert resolve_init(f"runs:/{run_id}/model/{WEIGHTS}", tracking) == str(logged / WEIGHTS)

    for spec in ("models:/tiny@nope", "models:/absent/1", "runs:/0123456789abcdef/model", f"runs:/{run_id}/nothing",
                 "models:/tiny", f"{prefix}/nothing", f"{prefix}/ft/export"):
        with pytest.raises(TubeletError) as info:
            resolve_init(spec, tracking)
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"model.init {spec}:"), message


def _fetch(uri: str, cache: str, start: object, out: object) -> None:
    import os

    os.environ["TUBELET_CACHE_DIR"] = cache
    fs, path = sio.filesystem(uri)
    fs.info(path)  # a warm S3 client (fsspec keeps it): both ranks then reach the cache at once
    start.wait()  # type: ignore[attr-defined]
    out.put(sio.cached_copy(uri))  # type: ignore[attr-defined]


def test_node_cache_fetches_once_for_two_ranks_and_again_when_replaced(prefix: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes of one node ask at the same moment: one download, one shared copy."""
    uri, cache = _put(f"{prefix}/weights.pt", b"x" * 20_000_000), tmp_path / "cache"
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    ranks = [ctx.Process(target=_fetch, args=(uri, str(cache), start, out)) for _ in range(2)]
    for p in ranks:
        p.start()
    paths = {out.get(timeout=120) for _ in ranks}
    for p in ranks:
        p.join(timeout=60)
    assert len(paths) == 1 and Path(paths.pop()).read_bytes() == b"x" * 20_000_000
    fetches = lambda: [json.loads(line) for line in (cache / sio.FETCH_LOG).read_text().splitlines()]  # noqa: E731
    assert [f["uri"] for f in fetches()] == [uri]

    monkeypatch.setenv("TUBELET_CACHE_DIR", str(cache))
    sio.cached_copy(uri)  # a later rank, or a restarted worker: served from the cache
    assert len(fetches()) == 1
    _put(uri, b"y" * 10)  # overwritten in storage: the new version is fetched
    assert Path(sio.cached_copy(uri)).read_bytes() == b"y" * 10
    assert len(fetches()) == 2


def test_finetune_from_an_s3_init(data: dict[str, Path], prefix: str, tmp_path: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Two Ray Train workers fine-tune from weights on S3: the driver checks them, the node fetches once."""
    weights = f"{prefix}/pretrain/export/pretrain_fp32.pt"
    sio.upload_file(_copy(data["pretrain_run"] / "export" / "pretrain_fp32.pt", tmp_path), weights)
    cfg = _ft(data, tmp_path, "from-s3", f"model.init={prefix}/pretrain", "train.steps=2", "train.checkpoint_every=2",
              "finetune.val_split=", "tracking.registered_model=")
    assert finetune_job.run(cfg) == 0
    out = capsys.readouterr().out
    assert f"init {weights}: loaded" in out and "skipped the pre-training decoder" in out
    card = json.loads((tmp_path / "runs" / "from-s3" / "export" / "last" / CARD).read_text())
    assert card["source"]["init"] == weights  # what the workers were given: the concrete uri
    # One download on this node (driver and both ranks share it), whoever came first.
    log = sio.cache_dir() / sio.FETCH_LOG
    assert [json.loads(line)["uri"] for line in log.read_text().splitlines()].count(weights) == 1


def _copy(path: Path, tmp: Path) -> Path:
    target = tmp / f"upload-{uuid.uuid4().hex[:6]}.pt"
    target.write_bytes(path.read_bytes())
    return target


def test_bad_init_stops_the_job_in_one_line_before_compute(data: dict[str, Path], prefix: str,  # noqa: F811
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs._cli import job_main
    from pipeline.train.job_configs import FinetuneConfig

    argv = ["--config", str(REPO / "jobs/configs/finetune/demo.toml"), "--set", f"data.shards={data['shards']}",
            "--set", f"run.output={tmp_path / 'runs'}", "--set", f"model.init={prefix}/absent",
            "--set", f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    assert job_main(FinetuneConfig, finetune_job.run, argv, prog="jobs.finetune") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jobs.finetune: error: model.init {prefix}/absent: no such file or folder"]
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
