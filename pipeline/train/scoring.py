"""Multi-view video classification metrics: views -> per-video scores -> top-k, per class, confusion.

    probs = aggregate_views(logits)                  # [N, V, K] -> [N, K]: softmax, mean over views
    report = classification_report(probs, labels, class_names)
    picture = confusion_picture(report["confusion"], class_names)

VideoMAE's test protocol: every video is cut into ``clips x crops`` views, each view is
classified, and the softmax scores are averaged per video before ranking. :func:`evaluate_pass`
runs a model over an evaluation loader on every rank and gathers the per-video scores, so each
video is counted exactly once whatever the number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.train import comm
from pipeline.train.batch import model_input


def aggregate_views(logits: torch.Tensor) -> torch.Tensor:
    """``logits [N, V, K]`` -> ``[N, K]`` probabilities: softmax per view, averaged over the V views."""
    if logits.ndim != 3:
        raise ValueError(f"logits must be [videos, views, classes], got {list(logits.shape)}")
    return logits.float().softmax(dim=-1).mean(dim=1)


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of videos whose label is among the ``k`` highest scores (k capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    return float((top == labels.view(-1, 1)).any(dim=1).float().mean())


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).numpy()


def classification_report(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                          topk: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """Top-k accuracies, per-class accuracy (None for classes without videos), mean class accuracy,
    the confusion matrix (list of rows) and the video count."""
    num_classes = probs.shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} model outputs")
    labels = labels.long()
    matrix = confusion_matrix(probs.argmax(dim=1), labels, num_classes)
    support = matrix.sum(axis=1)
    per_class = {n: (float(matrix[i, i] / support[i]) if support[i] else None) for i, n in enumerate(names)}
    seen = [v for v in per_class.values() if v is not None]
    report: dict[str, Any] = {f"top{k}": topk_accuracy(probs, labels, k) for k in topk}
    report.update(mean_class_accuracy=float(np.mean(seen)) if seen else float("nan"), per_class=per_class,
                  support={n: int(support[i]) for i, n in enumerate(names)}, confusion=matrix.tolist(),
                  class_names=names, num_videos=int(len(labels)))
    return report


def confusion_figure(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]) -> Any:
    """A matplotlib ``Figure`` of the confusion matrix: rows = true class, columns = predicted,
    cells shaded by the row-normalised share and labelled with their counts, full class names on
    both axes. Sized from the class count and the longest name (a few classes: >= 5 x 4 inches)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    m = np.asarray(matrix, dtype=np.int64)
    k = m.shape[0]
    names = [str(n) for n in class_names] if len(class_names) == k else [str(i) for i in range(k)]
    rows = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    cell = min(0.6, max(0.12, 12.0 / max(k, 1)))  # inches per cell: 0.6 for a few classes, 12 in at most
    font = min(10.0, max(4.0, cell * 16))
    longest = max((len(n) for n in names), default=1) * font / 72 * 0.62  # inches a name takes
    fig = Figure(figsize=(max(5.0, k * cell + longest + 2.0), max(4.0, k * cell + longest + 1.2)), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(k), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({int(m.sum())} videos)")
    if k <= 30:  # counts stay readable up to ~30 classes
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=font,
                        color="white" if rows[i, j] > 0.5 else "black")
    return fig


def confusion_picture(matrix: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` rendering of :func:`confusion_figure` (what evaluation saves as
    confusion.png), cropped to what is drawn so that no name or axis title is cut."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    confusion_figure(matrix, class_names).savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Running a model over an evaluation loader


@dataclass
class EvalResult:
    """Per-video scores of one pass (gathered over ranks: every video once)."""

    keys: list[str] = field(default_factory=list)
    probs: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0))
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    views: int = 0

    def report(self, class_names: Sequence[str], topk: Sequence[int] = (1, 5)) -> dict[str, Any]:
        return {**classification_report(self.probs, self.labels, class_names, topk), "views_per_video": self.views}


@torch.no_grad()
def video_scores(model: nn.Module, video: torch.Tensor, dtype: torch.dtype = torch.float32,
                 chunk: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """uint8 ``video [B, V, T, H, W, C]`` -> per-video probabilities ``[B, K]`` on the CPU (views in
    chunks of ``chunk``). Inputs go to ``device`` (default: the model's) and are normalised there,
    here and nowhere else."""
    b, v = video.shape[:2]
    device = device or next(model.parameters()).device
    flat = video.flatten(0, 1)
    chunk = chunk or flat.shape[0]
    logits = torch.cat([model(model_input(flat[i:i + chunk], device, dtype)[0]).float()
                        for i in range(0, len(flat), chunk)])
    return aggregate_views(logits.view(b, v, -1)).cpu()


@torch.no_grad()
def evaluate_pass(model: nn.Module, batches: Iterable[dict[str, Any]], dtype: torch.dtype = torch.float32,
                  lockstep: bool = False, chunk: int = 0) -> EvalResult:
    """Score every video of this rank's share, then gather all ranks' results (collective).

    ``lockstep``: every rank runs a forward per round even after its own share is done (a dummy
    one), for models whose forward is itself collective (ZeRO-3 gathers parameters per layer).
    """
    was_training = model.training
    model.eval()
    device = comm.training_device()
    keys, probs, labels, views, shape = [], [], [], 0, None
    it = iter(batches)
    while True:
        batch = next(it, None)
        if lockstep and not comm.any_rank(batch is not None):
            break
        if batch is None:
            if not lockstep:
                break
            video_scores(model, torch.zeros(shape, dtype=torch.uint8), dtype, chunk, device)  # keeps the collective forward in step
            continue
        shape, views = (1, *batch["video"].shape[1:]), batch["video"].shape[1]
        probs.append(video_scores(model, batch["video"], dtype, chunk, device))
        labels.append(batch["label"].long())
        keys.extend(batch["keys"])
    model.train(was_training)
    local = (keys, torch.cat(probs) if probs else None, torch.cat(labels) if labels else None, views)
    return _merge(comm.gather_objects(local))


def _merge(parts: list[Any]) -> EvalResult:
    seen: dict[str, int] = {}
    keys, probs, labels, views = [], [], [], 0
    for part_keys, part_probs, part_labels, part_views in parts:
        if part_probs is None:
            continue
        views = views or part_views
        for i, key in enumerate(part_keys):
            if key in seen:  # a sample counted twice would bias the accuracy
                continue
            seen[key] = len(keys)
            keys.append(key)
            probs.append(part_probs[i])
            labels.append(part_labels[i])
    if not keys:
        return EvalResult(views=views)
    return EvalResult(keys, torch.stack(probs), torch.stack(labels), views)
