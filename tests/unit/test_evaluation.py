"""Multi-view aggregation with known logits, the report's numbers, the confusion picture, and the
layer-decay lr scale that fine-tuning relies on."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.infra.engine import set_lr
from pipeline.models import create_model, param_groups
from pipeline.train.scoring import (
    EvalResult,
    _merge,
    aggregate_views,
    classification_report,
    confusion_figure,
    confusion_picture,
    evaluate_pass,
)


def test_views_are_averaged_as_softmax_scores_not_logits() -> None:
    # video 0: one very confident wrong view (class 1) and two mildly right views (class 0).
    logits = torch.tensor([[[0.0, 10.0], [1.0, 0.0], [1.0, 0.0]],
                           [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    probs = aggregate_views(logits)
    p_right = 1 / (1 + math.exp(-1))
    expected0 = torch.tensor([(1 / (1 + math.exp(10)) + 2 * p_right) / 3, 0.0])
    expected0[1] = 1 - expected0[0]
    assert torch.allclose(probs[0], expected0, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2))
    assert probs[0].argmax() == 1  # softmax averaging: the confident view wins here ...
    assert logits[0].mean(0).argmax() == 1
    # ... and a video whose views disagree mildly keeps the majority
    majority = aggregate_views(torch.tensor([[[2.0, 0.0], [2.0, 0.0], [0.0, 3.0]]]))
    assert majority.argmax() == 0


def test_report_top1_top5_per_class_and_confusion() -> None:
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.5, 0.1, 0.3, 0.1], [0.1, 0.5, 0.1, 0.3]])
    labels = torch.tensor([0, 1, 2, 2])
    report = classification_report(probs, labels, ["a", "b", "c", "d"], topk=(1, 2, 5))
    assert report["top1"] == pytest.approx(0.5)
    assert report["top2"] == pytest.approx(0.75)  # video 2's label is second, video 3's third
    assert report["top5"] == pytest.approx(1.0)  # k capped at the class count
    assert report["per_class"] == {"a": 1.0, "b": 1.0, "c": 0.0, "d": None}
    assert report["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert report["confusion"][2] == [1, 1, 0, 0] and report["num_videos"] == 4
    assert report["support"] == {"a": 1, "b": 1, "c": 2, "d": 0}


def test_confusion_picture_is_readable_with_full_names_and_axis_titles() -> None:
    pic = confusion_picture([[3, 1], [0, 4]], ["left", "right"])
    assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3
    assert pic.shape[1] >= 400 and pic.shape[0] >= 300, pic.shape  # was 150 px wide
    ax = confusion_figure([[3, 1], [0, 4]], ["left", "right"]).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["left", "right"] == [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]  # the counts
    # Full names are drawn (none cut to "righ" or to 20 characters): longer names, a wider picture,
    # and names that differ only after their 20th character give different pictures.
    long = ["a_rather_long_class_name_left", "a_rather_long_class_name_right"]
    wide = confusion_picture([[3, 1], [0, 4]], long)
    assert wide.shape[1] > pic.shape[1] + 100, (wide.shape, pic.shape)
    other = confusion_picture([[3, 1], [0, 4]], ["a_rather_long_class_name_down", "a_rather_long_class_name_upper"])
    assert other.shape != wide.shape or (other != wide).any()


def test_the_report_and_the_confusion_picture_reach_the_mlflow_run(tmp_path: Path) -> None:
    """evaluate's rank 0 writes report.json and confusion.png to run.output and logs both to MLflow
    (the picture was logged after moving it out of its temporary folder: 'No such file')."""
    from mlflow import MlflowClient
    from PIL import Image

    from pipeline.infra.tracking import MlflowTracker, TrackingConfig
    from pipeline.train.evaluate import _write

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(TrackingConfig(tracking_uri=uri, experiment="unit", system_metrics=False)).start("ev")
    probs, labels = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
    report = {**classification_report(probs, labels, ["left", "right"]), "views_per_video": 1}
    run_id = tracker.run_id or ""
    _write(SimpleNamespace(run=SimpleNamespace(output=str(tmp_path / "eval"))), report, tracker)
    assert tracker.failures == 0
    tracker.end()
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(run_id)} >= {"confusion.png", "report.json"}
    png = Path(client.download_artifacts(run_id, "confusion.png", str(tmp_path)))
    with Image.open(png) as picture:
        assert picture.format == "PNG" and picture.width >= 400, picture.size
    assert png.read_bytes() == (tmp_path / "eval" / "confusion.png").read_bytes()
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["confusion"] == [[1, 0], [1, 1]]


class _Fixed(torch.nn.Module):
    """Logits = the first 2 values of each view, so the expected scores are known."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :2] + self.w


def test_evaluate_pass_groups_views_per_video() -> None:
    # 3 videos x 4 uint8 views of 1 pixel; logits = the first 2 normalised channel values
    video = torch.zeros(3, 4, 1, 1, 1, 3, dtype=torch.uint8)  # the loader's [B, V, T, H, W, C]
    video[0, ..., 0] = 255   # video 0 -> class 0
    video[1, ..., 1] = 255   # video 1 -> class 1
    video[2, :2, ..., 0] = 255  # video 2: 2 views each way -> about 0.5 / 0.5
    video[2, 2:, ..., 1] = 255
    batches = [{"video": video[:2], "label": torch.tensor([0, 1]), "keys": ["a", "b"]},
               {"video": video[2:], "label": torch.tensor([0]), "keys": ["c"]}]  # c leans to 1 (0.4985 / 0.5015)
    result = evaluate_pass(_Fixed(), batches, chunk=3)
    assert result.keys == ["a", "b", "c"] and result.views == 4
    assert torch.allclose(result.probs[2], torch.tensor([0.5, 0.5]), atol=0.02)
    assert result.report(["x", "y"])["top1"] == pytest.approx(2 / 3)


def test_gathered_results_count_each_video_once() -> None:
    part = (["a", "b"], torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]), 6)
    other = (["b", "c"], torch.tensor([[0.2, 0.8], [0.6, 0.4]]), torch.tensor([1, 1]), 6)
    merged = _merge([part, other, ([], None, None, 0)])
    assert merged.keys == ["a", "b", "c"] and merged.views == 6
    assert merged.report(["x", "y"])["top1"] == pytest.approx(2 / 3)
    assert isinstance(_merge([([], None, None, 0)]), EvalResult)


@pytest.mark.parametrize("decay", [0.75, 0.5])
def test_layer_decay_lr_scale_per_block(decay: float) -> None:
    model = create_model("vit_tiny", "classify", num_classes=3, num_frames=4, img_size=32)
    depth = model.encoder.spec.depth
    groups = param_groups(model, 0.05, decay)
    scale_of = {name: g["lr_scale"] for g in groups for name in g["names"]}
    top = depth + 1
    assert scale_of["head.weight"] == pytest.approx(1.0) and scale_of["fc_norm.weight"] == pytest.approx(1.0)
    assert scale_of["encoder.patch_embed.proj.weight"] == pytest.approx(decay ** top)
    for i in range(depth):
        assert scale_of[f"encoder.blocks.{i}.attn.qkv.weight"] == pytest.approx(decay ** (top - (i + 1)))
        assert scale_of[f"encoder.blocks.{i}.norm1.weight"] == pytest.approx(decay ** (top - (i + 1)))

    class _Engine:  # set_lr multiplies the step's lr by each group's scale
        optimizer = torch.optim.AdamW(groups, lr=1.0)

    set_lr(_Engine(), 1e-3)
    lrs = {name: g["lr"] for g in _Engine.optimizer.param_groups for name in g["names"]}
    assert lrs["encoder.blocks.0.mlp.fc1.weight"] == pytest.approx(1e-3 * decay ** depth)
    assert lrs["head.bias"] == pytest.approx(1e-3)


def test_frozen_encoder_leaves_only_the_head_in_the_optimizer() -> None:
    model = create_model("vit_tiny", "classify", num_classes=3, num_frames=4, img_size=32)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    names = {n for g in param_groups(model, 0.05, 0.75) for n in g["names"]}
    assert names == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
