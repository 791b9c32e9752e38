"""Progressive training for real on CPU (``jobs.pipeline`` with ``postpretrain``): the target is
sharded, a classifier is post-pre-trained on a labelled hybrid of two other shard sets (label
spaces merged by class name; the target's held-out videos and a repeat across the sources left
out, each listed with its reason), and the target is fine-tuned from it (the hybrid head dropped).

Embedded Ray, DeepSpeed over gloo, a SQLite MLflow store, synthetic motion videos. Pre-training
is not a stage here (test_pipeline_job.py covers pre-train -> fine-tune): the post-pre-training
starts from a random init, to keep the test short.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from jobs import pipeline as pipeline_job
from jobs._cli import job_main
from pipeline.data.synthetic import generate_synthetic
from pipeline.orchestration.sharding import ShardSection, shard
from pipeline.workflow.pipeline_config import PipelineConfig

TARGET = ["left", "right"]

PIPELINE_TOML = """
[pipeline]
name = "prog"
output = "{root}/runs"
stages = ["shard", "postpretrain", "finetune"]
tracking_uri = "sqlite:///{root}/mlflow.db"
experiment = "progressive-test"

[shard]
manifest = "{root}/target.csv"
max_short_side = 64
videos_per_shard = 4
progress = false

[postpretrain]
config = "finetune/demo"
[postpretrain.model]
init = "random"
num_frames = 4
img_size = 32
[postpretrain.data]
sources = ["{root}/hybrid_a", "{root}/hybrid_b"]
sampling_rate = 2
batch_size = 4
repeated_aug = 1
num_workers = 0
scales = [1.0]
[postpretrain.optim]
lr = 1e-3
warmup_fraction = 0.0
[postpretrain.train]
steps = 3
checkpoint_every = 3
log_every = 1
[postpretrain.scaling]
num_workers = 2
[postpretrain.tracking]
system_metrics = false

[finetune]
config = "finetune/demo"
[finetune.model]
num_frames = 4
img_size = 32
[finetune.data]
sampling_rate = 2
batch_size = 4
repeated_aug = 1
num_workers = 0
scales = [1.0]
[finetune.optim]
lr = 1e-3
warmup_fraction = 0.0
[finetune.train]
steps = 2
checkpoint_every = 2
log_every = 1
[finetune.scaling]
num_workers = 1
[finetune.tracking]
system_metrics = false
"""


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.write_text("\n".join(["uri,label,split"] + [",".join(r) for r in rows]) + "\n")


@pytest.fixture(scope="module")
def progressive(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("progressive")
    target = generate_synthetic(root / "target_videos", num_per_class=4, classes=TARGET, frames=16, size=(48, 48),
                                splits={"train": 0.5, "val": 0.25, "test": 0.25})
    _manifest(root / "target.csv", [(e.uri, e.label, e.split) for e in target])
    a = generate_synthetic(root / "a_videos", num_per_class=3, classes=["left", "cw"], frames=16, size=(48, 48),
                           seed=1, splits={"train": 1.0})
    b = generate_synthetic(root / "b_videos", num_per_class=3, classes=["up", "cw"], frames=16, size=(48, 48),
                           seed=2, splits={"train": 1.0})
    held = [e for e in target if e.split in ("val", "test")]
    # Hybrid A: its own videos + copies of the target's held-out videos (as a crawl would have them).
    # Hybrid B: its own videos under other spellings of the class names + one of A's videos again.
    _manifest(root / "a.csv", [(e.uri, e.label, "train") for e in a + held])
    spelled = {"up": "Up", "cw": "CW"}
    _manifest(root / "b.csv", [(e.uri, spelled[e.label], "train") for e in b] + [(a[0].uri, spelled.get(a[0].label, a[0].label), "train")])
    for name in ("a", "b"):
        shard(ShardSection(manifest=str(root / f"{name}.csv"), output=str(root / f"hybrid_{name}"), max_short_side=64,
                           videos_per_shard=4, progress=False))
    config = root / "pipeline.toml"
    config.write_text(PIPELINE_TOML.format(root=root))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = job_main(PipelineConfig, pipeline_job.run, ["--config", str(config)], prog="jobs.pipeline")
    assert rc == 0, err.getvalue()[-3000:]
    return {"root": root, "run": root / "runs" / "prog", "out": out.getvalue(), "held": held, "a": a}


def test_post_pre_training_merges_the_label_spaces_and_leaves_out_held_out_videos(progressive: dict[str, Any]) -> None:
    run = progressive["run"]
    records = [json.loads(line) for line in (run / "postpretrain" / "excluded_samples.jsonl").read_text().splitlines()]
    held = {r["sha256"] for r in records if r["reason"].startswith("held out: the same video is in ")}
    repeats = [r for r in records if r["reason"].startswith("repeat of ")]
    assert len(held) == len(progressive["held"]) == 4  # every held-out target video in hybrid A, by content
    assert {r["source"].rsplit("/", 1)[-1] for r in records if r not in repeats} == {"hybrid_a"}
    assert len(repeats) == 1 and repeats[0]["source"].endswith("hybrid_b") and "hybrid_a" in repeats[0]["reason"]
    card = json.loads((run / "postpretrain" / "export" / "last" / "model.json").read_text())
    # B's "CW" is A's "cw"; "Up" keeps its only spelling; "right" is a class of A (its held-out copies)
    assert card["class_names"] == ["cw", "left", "right", "Up"] and card["model"]["num_classes"] == 4
    assert card["source"]["step"] == 3


def test_fine_tuning_starts_from_the_post_pre_trained_classifier_without_its_head(progressive: dict[str, Any]) -> None:
    run = progressive["run"]
    card = json.loads((run / "finetune" / "export" / "last" / "model.json").read_text())
    assert card["class_names"] == TARGET and card["model"]["num_classes"] == 2
    assert card["source"]["init"] == str(run / "postpretrain" / "export" / "last" / "model.pt")
    out = progressive["out"]
    assert "model.init_head=auto: dropping the head of" in out and "it was trained on 4 other classes" in out
    assert "dropped the checkpoint's classifier head" in out  # the init report, before any worker starts
    summary = json.loads((run / "summary.json").read_text())
    assert summary["postpretrain"]["classes"] == 4 and summary["finetune"]["from"] == "post-pre-training"
    assert [o["outcome"] for o in summary["stages"] if o["stage"] in ("postpretrain", "finetune")] == ["done", "done"]
    client = MlflowClient(f"sqlite:///{progressive['root'] / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("progressive-test").experiment_id])
    assert {"postpretrain", "finetune"} <= {r.data.tags.get("mlflow.runName") for r in runs}
