"""`make demo` as a user runs it (the Makefile target, its dataset builds and the shipped pipeline
config), shortened: a few steps per stage, everything written under a temporary folder. The full
demo's time on 2 cores is in the README; this checks that the command works end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def test_make_demo_end_to_end_shortened(tmp_path: Path) -> None:
    runs, db = tmp_path / "runs", tmp_path / "mlflow.db"
    short = [f"pipeline.output={runs}", f"pipeline.tracking_uri=sqlite:///{db}",
             "pretrain.train.steps=4", "pretrain.train.checkpoint_every=4", "pretrain.train.image_every=4",
             "finetune.train.steps=4", "finetune.train.checkpoint_every=4", "evaluate.data.test_num_clips=1",
             "evaluate.data.test_num_crops=1"]
    demo_args = " ".join(f"--set {s}" for s in short)
    # -o: the test's own environment is the installed one; never reinstall it from inside a test.
    make = subprocess.run(["make", "-C", str(REPO), "-o", f"{VENV}/.tubelet-installed", "demo", f"VENV={VENV}",
                           f"DATA={tmp_path / 'data'}", f"DEMO_ARGS={demo_args}"],
                          capture_output=True, text=True, timeout=1200)
    out = make.stdout + make.stderr
    assert make.returncode == 0, out[-6000:]
    # The datasets the target builds, and the summary it ends with.
    assert (tmp_path / "data" / "sample" / "manifest.csv").exists()
    assert (tmp_path / "data" / "shards" / "sample" / "index.json").exists()
    assert "pipeline demo: finished" in out, out[-3000:]
    for line in ("shards     ", "pre-train  loss ", "fine-tune  val top-1 ", "baseline   val top-1 ", " test top-1 ",
                 "evaluate   test top-1 ", "MLflow UI  "):
        assert line in out, f"summary line {line.strip()!r} missing:\n{out[-3000:]}"
    summary = json.loads((runs / "demo" / "summary.json").read_text())
    outcomes = {s["stage"]: s["outcome"] for s in summary["stages"]}
    assert outcomes.pop("postpretrain") == "not selected" and set(outcomes.values()) == {"done"}, summary["stages"]
    assert isinstance(summary["baseline"]["test_top1"], float)  # the random init, evaluated on the test split too
    assert summary["mlflow"]["tracking_uri"] == f"sqlite:///{db}"
    # The demo's dataset keeps videos for pre-training only; fine-tuning never sees them.
    assert set(summary["shards"]["by_split"]) == {"unlabelled", "train", "val", "test"}
