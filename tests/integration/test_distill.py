"""Distillation for real on CPU: a tiny fine-tuned teacher (jobs.finetune, registered in MLflow)
teaches a student through jobs.distill on 2 Ray Train workers (DeepSpeed ZeRO over gloo), on
labelled and on unlabelled synthetic motion shards; the student's export evaluates with jobs.evaluate."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from jobs import distill as distill_job
from jobs import evaluate as evaluate_job
from jobs import finetune as finetune_job
from jobs._cli import job_main
from pipeline.core.config import load_config
from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import ShardSection, shard
from pipeline.train.job_configs import DistillConfig, EvaluateConfig, FinetuneConfig
from pipeline.train.model_registry import load_classifier

REPO = Path(__file__).resolve().parents[2]
CLASSES = sorted(["left", "right", "up", "down"])  # translation classes: the tiny model learns them (test_finetune)
SIZE = ["model.num_frames=4", "model.img_size=32", "data.sampling_rate=2"]
COMMON = ["data.batch_size=4", "data.repeated_aug=2", "data.num_workers=0", "data.scales=[1.0]", "mixup.prob=0",
          "mixup.label_smoothing=0", "optim.lr=2e-3", "optim.layer_decay=1.0", "optim.warmup_steps=2",
          "train.log_every=1", "tracking.system_metrics=false", "scaling.num_workers=2", "model.drop_path=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, ray_local: None, mlflow_template: Path) -> dict[str, Path]:
    """Shards (4 classes x 6 videos, train/val), the module's MLflow DB and a teacher fine-tuned on them
    (registered as motion-teacher@champion)."""
    root = tmp_path_factory.mktemp("distill-data")
    entries = generate_synthetic(root / "synthetic", num_per_class=6, classes=CLASSES, frames=16, size=(48, 48),
                                 splits={"train": 0.67, "val": 0.33})
    rows = ["uri,label,split"] + [f"{e.uri},{e.label},{e.split}" for e in entries]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    shard(ShardSection(manifest=str(root / "manifest.csv"), output=str(root / "shards"), max_short_side=64,
                       videos_per_shard=4, progress=False))
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    cfg = load_config(FinetuneConfig, REPO / "jobs/configs/finetune/demo.toml", [
        f"data.shards={root / 'shards'}", f"run.output={root / 'runs'}", "run.name=teacher", *SIZE, *COMMON,
        "model.init=random", "train.steps=24", "train.checkpoint_every=24", "finetune.val_every=12",
        f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}", "tracking.registered_model=motion-teacher"])
    assert finetune_job.run(cfg) == 0
    return {"root": root, "shards": root / "shards", "teacher": root / "runs" / "teacher"}


def _uri(data: dict[str, Path]) -> str:
    return f"sqlite:///{data['root'] / 'mlflow.db'}"


def _distill(data: dict[str, Path], tmp: Path, name: str, *extra: str) -> DistillConfig:
    return load_config(DistillConfig, REPO / "jobs/configs/distill/demo.toml", [
        f"data.shards={data['shards']}", f"run.output={tmp / 'runs'}", f"run.name={name}", *SIZE, *COMMON,
        "model.init=random", "distill.teacher=models:/motion-teacher@champion", f"tracking.tracking_uri={_uri(data)}",
        "tracking.registered_model=", *extra])


def _run(client: MlflowClient, name: str):  # noqa: ANN202
    return client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string=f"attributes.run_name = '{name}'")[0]


def test_distil_a_student_from_a_registered_teacher(data: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _distill(data, tmp_path, "student", "distill.alpha=0.7", "distill.temperature=2.0", "train.steps=16",
                   "train.checkpoint_every=16", "finetune.val_every=8", "tracking.registered_model=motion-student")
    assert distill_job.run(cfg) == 0
    out = capsys.readouterr().out
    assert "model.num_classes: 6 -> 4 (labels of the shard index)" in out
    assert "vit_tiny, 4 classes, val top-1" in out  # the driver names the teacher it resolved
    assert "registered models:/motion-student/1" in out

    client = MlflowClient(_uri(data))
    run = _run(client, "student")
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("loss/train", "loss/kd", "loss/ce", "val_top1", "teacher_val_top1", "train_top1")}
    assert sorted(history["loss/kd"]) == list(range(1, 17)) and sorted(history["loss/ce"]) == list(range(1, 17))
    assert sorted(history["val_top1"]) == [8, 16]
    assert client.get_metric_history(run.info.run_id, "loss/feat") == []  # distill.feature_weight = 0: no term
    assert list(history["teacher_val_top1"]) == [0], "the teacher is validated once, before the first step"
    # loss/train is alpha * kd + (1 - alpha) * ce at every step (means over ranks of each term)
    for step in range(1, 17):
        expected = 0.7 * history["loss/kd"][step] + 0.3 * history["loss/ce"][step]
        assert history["loss/train"][step] == pytest.approx(expected, rel=1e-4), step
    # The student learns to match the teacher: KD over the last 4 steps well below the first 4 (a random
    # student starts near KL(teacher || uniform))
    kd = history["loss/kd"]
    first, last = sum(kd[s] for s in range(1, 5)) / 4, sum(kd[s] for s in range(13, 17)) / 4
    assert last < 0.8 * first, kd
    # The teacher's val top-1 in this run is the one its card was kept on: same data, same views, same weights.
    teacher_card = json.loads((data["teacher"] / "export" / "best" / "model.json").read_text())
    assert history["teacher_val_top1"][0] == pytest.approx(teacher_card["metrics"]["val_top1"], abs=1e-6)
    params = run.data.params
    assert params["distill.alpha"] == "0.7" and params["distill.temperature"] == "2.0"
    assert params["distill.feature_weight"] == "0.0"  # off here, and logged so runs can be told apart
    assert params["distill.teacher"].endswith("model") and run.data.tags["stage"] == "distill"

    # The student's export: a model folder that jobs.evaluate evaluates (2 workers) and the registry serves.
    export = tmp_path / "runs" / "student" / "export"
    card = json.loads((export / "last" / "model.json").read_text())
    assert card["class_names"] == CLASSES and card["source"]["teacher"] == params["distill.teacher"]
    assert card["source"]["step"] == 16
    model, _ = load_classifier("models:/motion-student@champion", tracking=_uri(data))
    assert model.head.out_features == 4
    ev = load_config(EvaluateConfig, REPO / "jobs/configs/evaluate/demo.toml", [
        f"data.shards={data['shards']}", "data.split=val", *SIZE, "data.num_workers=0", "data.test_num_clips=1",
        "data.test_num_crops=1", f"model.init={tmp_path / 'runs' / 'student'}", f"run.output={tmp_path / 'eval'}",
        "run.name=ev-student", "tracking.enabled=false", "scaling.num_workers=2"])
    assert evaluate_job.run(ev) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    kept = json.loads((export / "best" / "model.json").read_text())
    assert report["num_videos"] == 8
    # 1 clip x 1 crop: the same views the in-training validation scored the kept weights on
    assert report["top1"] == pytest.approx(kept["metrics"]["val_top1"], abs=1e-6)


def test_alpha_zero_trains_exactly_as_fine_tuning(data: dict[str, Path], tmp_path: Path) -> None:
    """With ``distill.alpha=0`` the KD term weighs nothing, so a distillation run must be the fine-tuning run
    of the same config and seed, bit for bit: same losses, same weights. This is what makes the benchmark's
    "distilled vs direct" rows differ only by the teacher's term. It fails if the teacher's load or forward
    draws from the student's RNG streams (init, drop path, mixup), or if distillation's loop diverges from
    fine-tuning's (loader, schedule, loss, what is exported). Mixup and drop path are on, so those streams
    are exercised."""
    same = [*SIZE, *COMMON, "model.init=random", "train.steps=6", "train.checkpoint_every=6", "finetune.val_every=0",
            "finetune.val_split=", "mixup.prob=1.0", "model.drop_path=0.1", "run.seed=3", "data.seed=3",
            f"run.output={tmp_path / 'runs'}", f"data.shards={data['shards']}", f"tracking.tracking_uri={_uri(data)}",
            "tracking.registered_model="]
    ft = load_config(FinetuneConfig, REPO / "jobs/configs/finetune/demo.toml", [*same, "run.name=ft-a0"])
    assert finetune_job.run(ft) == 0
    kd = load_config(DistillConfig, REPO / "jobs/configs/distill/demo.toml",
                     [*same, "run.name=kd-a0", "distill.alpha=0", "distill.teacher=models:/motion-teacher@champion"])
    assert distill_job.run(kd) == 0
    client = MlflowClient(_uri(data))
    losses = [{m.step: m.value for m in client.get_metric_history(_run(client, name).info.run_id, "loss/train")}
              for name in ("ft-a0", "kd-a0")]
    assert sorted(losses[0]) == list(range(1, 7)) and losses[0] == losses[1]
    a, _ = load_classifier(str(tmp_path / "runs" / "ft-a0" / "export" / "last"))
    b, _ = load_classifier(str(tmp_path / "runs" / "kd-a0" / "export" / "last"))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_distil_on_unlabelled_shards_learns_the_teachers_classes(data: dict[str, Path], tmp_path: Path) -> None:
    """KD only, plus the similarity-preserving feature term (distill.feature_weight) from a student wider
    than its teacher (vit_tiny_big, 128, from a vit_tiny, 96): no projector needed, the term is logged."""
    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(data["shards"], unlabelled)
    index = json.loads((unlabelled / "index.json").read_text())
    (unlabelled / "index.json").write_text(json.dumps({**index, "labels": []}))
    cfg = _distill(data, tmp_path, "unlabelled", f"data.shards={unlabelled}", "finetune.val_split=",
                   f"distill.teacher={data['teacher']}", "train.steps=4", "train.checkpoint_every=4",
                   "model.name=vit_tiny_big", "distill.feature_weight=0.5")
    assert distill_job.run(cfg) == 0
    card = json.loads((tmp_path / "runs" / "unlabelled" / "export" / "last" / "model.json").read_text())
    assert card["class_names"] == CLASSES and card["model"]["num_classes"] == 4
    assert card["model"]["name"] == "vit_tiny_big"
    client = MlflowClient(_uri(data))
    run = _run(client, "unlabelled")
    assert client.get_metric_history(run.info.run_id, "loss/ce") == []  # KD only
    kd, feat, train = ({m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
                       for key in ("loss/kd", "loss/feat", "loss/train"))
    assert sorted(kd) == [1, 2, 3, 4] and sorted(feat) == [1, 2, 3, 4]
    assert all(math.isfinite(v) and v > 0 for v in feat.values()), feat  # random student vs teacher: not alike
    # loss/train is kd + feature_weight * feat at every step (means over ranks of each term)
    assert all(train[s] == pytest.approx(kd[s] + 0.5 * feat[s], rel=1e-5) for s in kd), (train, kd, feat)


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert job_main(DistillConfig, distill_job.run, argv, prog="jobs.distill") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jobs.distill: error:"), err
    return err[0]


def test_a_teacher_that_does_not_fit_fails_on_the_driver_in_one_line(data: dict[str, Path], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--config", str(REPO / "jobs/configs/distill/demo.toml"), *[f"--set={s}" for s in SIZE],
            f"--set=data.shards={data['shards']}", f"--set=run.output={tmp_path / 'runs'}",
            "--set=tracking.enabled=false", "--set=model.init=random"]
    # a teacher fine-tuned on other classes (its card names them in another order)
    other = tmp_path / "other"
    shutil.copytree(data["teacher"] / "export" / "best", other)
    card = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**card, "class_names": list(reversed(CLASSES))}))
    line = _one_line_error(base + [f"--set=distill.teacher={other}"], capsys)
    assert "was fine-tuned on classes ['up', 'right', 'left', 'down'], the shards' labels are" in line, line
    # a teacher trained on another clip
    (other / "model.json").write_text(json.dumps({**card, "data": {**card["data"], "sampling_rate": 4}}))
    assert "data.sampling_rate=2 but distill.teacher" in _one_line_error(base + [f"--set=distill.teacher={other}"],
                                                                         capsys)
    # no teacher, and a weights file that is no model folder
    assert "distill.teacher is empty" in _one_line_error(base + ["--set=distill.teacher="], capsys)
    weights = tmp_path / "w.pt"
    torch.save({}, weights)
    assert "is no model folder" in _one_line_error(base + [f"--set=distill.teacher={weights}"], capsys)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint_*"))
