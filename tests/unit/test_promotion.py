"""When a registry alias moves to a newly registered version (a real SQLite MLflow registry in
tmp_path), and fine-tuning's ``model.init``: empty is refused before Ray, ``random`` is said by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from jobs import evaluate as evaluate_job
from jobs import finetune as finetune_job
from jobs._cli import job_main
from pipeline.core.config import ConfigError, load_config
from pipeline.models import create_model_from_config
from pipeline.models.model_config import ClassifierConfig
from pipeline.train.finetune import validation_data
from pipeline.train.job_configs import EvaluateConfig, FinetuneConfig
from pipeline.train.model_registry import (
    TAG_DATA,
    TAG_INIT,
    TAG_TOP1,
    ModelCard,
    ValidationData,
    register_model,
    registered_uri,
    write_model_folder,
)

REPO = Path(__file__).resolve().parents[2]
RECIPE = {"num_frames": 8, "sampling_rate": 2, "input_size": 64, "num_clips": 1, "num_crops": 1}
VAL = ValidationData("/data/shards/synthetic", "val", RECIPE, content="c0ffee")
OTHER = ValidationData("/data/shards/k400", "val", RECIPE, content="beef")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One SQLite registry and experiment for the module (each test registers its own model name)."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    return {"root": root, "uri": uri, "client": client,
            "experiment": client.create_experiment("promotion", artifact_location=str(root / "artifacts"))}


def _finetuned(store: dict[str, object], name: str, top1: float | None, init: str = "/runs/pretrain") -> tuple[str, str]:
    """A fine-tuning run with its kept model folder (card metrics ``val_top1``): (run id, folder)."""
    client: MlflowClient = store["client"]  # type: ignore[assignment]
    run_id = client.create_run(store["experiment"], run_name=name).info.run_id  # type: ignore[arg-type]
    folder = str(Path(store["root"]) / run_id / "best")  # type: ignore[arg-type]
    metrics = {} if top1 is None else {"val_top1": top1}
    write_model_folder({"w": torch.zeros(1)}, ModelCard(model={"name": "vit_tiny"}, class_names=["a", "b"],
                                                        metrics=metrics, source={"init": init}), folder)
    return run_id, folder


def _register(store: dict[str, object], model: str, top1: float | None, validation: ValidationData | None = VAL,
              promote: str = "if_better", init: str = "/runs/pretrain"):
    run_id, folder = _finetuned(store, model, top1, init)
    return register_model(str(store["uri"]), run_id, model, "champion", folder, promote, validation)


def _champion(store: dict[str, object], model: str) -> str:
    return str(store["client"].get_model_version_by_alias(model, "champion").version)  # type: ignore[attr-defined]


def test_the_first_version_takes_the_alias_and_records_its_validation(store: dict[str, object]) -> None:
    first = _register(store, "first", 0.45)
    assert first.moved and _champion(store, "first") == "1" and first.uri == "models:/first@champion"
    assert first.message == "registered models:/first/1 (val top-1 0.450); @champion set on it (no version held it)"
    tags = store["client"].get_model_version("first", "1").tags  # type: ignore[attr-defined]
    assert float(tags[TAG_TOP1]) == pytest.approx(0.45) and tags[TAG_DATA] == VAL.identity
    assert tags[TAG_INIT] == "/runs/pretrain"


def test_a_better_version_on_the_same_data_takes_the_alias(store: dict[str, object]) -> None:
    _register(store, "better", 0.40)
    second = _register(store, "better", 0.45)
    assert second.moved and _champion(store, "better") == "2"
    assert "@champion moved from version 1 (0.400) to version 2 (0.450), same validation data" in second.message


def test_a_worse_or_equal_version_leaves_the_alias_where_it_is(store: dict[str, object]) -> None:
    _register(store, "worse", 0.45)
    worse = _register(store, "worse", 0.225, init="random")
    assert not worse.moved and _champion(store, "worse") == "1" and worse.uri == "models:/worse/2"
    assert worse.message == ("registered models:/worse/2 (val top-1 0.225); "
                             "@champion stays on version 1 (val top-1 0.450, same validation data)")
    assert store["client"].get_model_version("worse", "2").tags[TAG_INIT] == "random"  # type: ignore[attr-defined]
    equal = _register(store, "worse", 0.45)  # strictly better only
    assert not equal.moved and _champion(store, "worse") == "1"


def test_a_version_validated_on_other_data_is_not_compared(store: dict[str, object]) -> None:
    _register(store, "other", 0.20)
    other = _register(store, "other", 0.90, validation=OTHER)
    assert not other.moved and _champion(store, "other") == "1"
    assert "not compared: the holder was validated on other data (val of /data/shards/synthetic" in other.message
    assert "@champion stays on version 1 (val top-1 0.200) (finetune.promote=always moves it)" in other.message
    views = ValidationData(VAL.shards, "val", {**RECIPE, "num_clips": 2}, VAL.content)  # other views: other data
    assert not _register(store, "other", 0.95, validation=views).moved
    unscored = _register(store, "other", None)  # no validation (finetune.val_split = ''): nothing to compare
    assert not unscored.moved and "this version has no validation score" in unscored.message


def test_promote_always_and_never_decide_alone(store: dict[str, object]) -> None:
    _register(store, "told", 0.45)
    always = _register(store, "told", 0.10, validation=OTHER, promote="always")
    assert always.moved and _champion(store, "told") == "2"
    assert "@champion moved from version 1 (val top-1 0.450) to version 2 (finetune.promote=always)" in always.message
    never = _register(store, "told", 0.99, promote="never")
    assert not never.moved and _champion(store, "told") == "2"


def test_registered_uri_names_the_alias_only_where_it_points(store: dict[str, object]) -> None:
    """What the pipeline summary shows for a fine-tuning run: @alias only when the alias was moved to it."""
    client: MlflowClient = store["client"]  # type: ignore[assignment]
    _register(store, "summary", 0.45)
    run_id, folder = _finetuned(store, "summary", 0.30)
    register_model(str(store["uri"]), run_id, "summary", "champion", folder, "if_better", VAL)
    assert registered_uri(str(store["uri"]), "summary", "champion", run_id) == "models:/summary/2"
    champion_run = client.get_model_version("summary", "1").run_id
    assert registered_uri(str(store["uri"]), "summary", "champion", champion_run) == "models:/summary@champion"
    assert registered_uri(str(store["uri"]), "summary", "champion", "0" * 32) == ""


def _shards(root: Path, sha: str = "aa", labels: tuple[str, ...] = ("a", "b")) -> Path:
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    entries = [{"name": "train-000000.tar", "split": "train", "samples": 4, "sha256": "11"},
               {"name": "val-000000.tar", "split": "val", "samples": 2, "sha256": sha}]
    (shards / "index.json").write_text(json.dumps({"shards": entries, "labels": list(labels)}))
    return shards


def _ft(shards: Path, *extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, REPO / "jobs/configs/finetune/demo.toml",
                       [f"data.shards={shards}", "tracking.enabled=false", *extra])


def test_validation_data_is_the_val_shards_split_and_views(tmp_path: Path) -> None:
    here = validation_data(_ft(_shards(tmp_path / "a"), "model.init=random"))
    assert here is not None and here.split == "val" and here.recipe["num_frames"] == 8
    same_bytes_elsewhere = validation_data(_ft(_shards(tmp_path / "b"), "model.init=random"))
    assert same_bytes_elsewhere is not None and same_bytes_elsewhere.identity == here.identity
    for changed in (validation_data(_ft(_shards(tmp_path / "c", sha="bb"), "model.init=random")),
                    validation_data(_ft(_shards(tmp_path / "d", labels=("b", "a")), "model.init=random")),
                    validation_data(_ft(_shards(tmp_path / "a"), "model.init=random", "finetune.val_num_crops=3")),
                    validation_data(_ft(_shards(tmp_path / "a"), "model.init=random", "data.sampling_rate=2"))):
        assert changed is not None and changed.identity != here.identity
    assert validation_data(_ft(_shards(tmp_path / "a"), "model.init=random", "finetune.val_split=")) is None


def test_an_empty_finetune_init_is_one_line_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray Train was started")

    monkeypatch.setattr(finetune_job, "fit", no_fit)
    shards = _shards(tmp_path)
    argv = ["--config", "finetune/demo", "--set", f"data.shards={shards}", "--set", "tracking.enabled=false"]
    assert job_main(FinetuneConfig, finetune_job.run, argv, prog="jobs.finetune", default_config="finetune/demo") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jobs.finetune: error: model.init is empty:"), err
    assert "model.init=random" in err[0] and "models:/<name>@<alias>" in err[0]
    with pytest.raises(ConfigError):
        finetune_job.prepare(_ft(shards))


def test_random_init_is_said_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = finetune_job.prepare(_ft(_shards(tmp_path), "model.init=random", "run.seed=3", "data.batch_size=2"))
    assert cfg.model.init == "random"  # the workers and the saved config keep the word
    assert "model.init=random: fine-tuning from a random init (run.seed 3)" in capsys.readouterr().out
    model = create_model_from_config(ClassifierConfig(name="vit_tiny", num_frames=4, img_size=32, num_classes=2,
                                                      init="random"), "classify")
    assert model.head.out_features == 2
    evaluation = load_config(EvaluateConfig, REPO / "jobs/configs/evaluate/demo.toml",
                             [f"data.shards={tmp_path / 'shards'}", "model.init=random", "tracking.enabled=false"])
    with pytest.raises(ConfigError, match="model.init is random: name the model to evaluate"):
        evaluate_job.prepare(evaluation)
