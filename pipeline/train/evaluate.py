"""Multi-view evaluation, run by every rank: ``evaluate(cfg, session)`` -> the report (identical on
all ranks). The shape of every per-rank loop; rank and world size come from the session (it
writes no checkpoints).

Each rank scores its share of the split's videos (``test_num_clips x test_num_crops`` views,
softmax averaged per video); the scores are gathered, and rank 0 writes
``<run.output>/report.json`` and ``confusion.png`` and logs both to MLflow. A plain model in
inference mode (no optimizer, no ZeRO): weights are loaded whole on every rank.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.core.errors import DataError
from pipeline.data.loader import eval_loader
from pipeline.data.shard_index import ShardIndex
from pipeline.train import comm, loop
from pipeline.train.job_configs import EvaluateConfig
from pipeline.train.model_registry import load_classifier
from pipeline.train.scoring import confusion_picture, evaluate_pass
from pipeline.train.session import Session

log = logging.getLogger(__name__)


def evaluate(cfg: EvaluateConfig, session: Session) -> dict[str, Any]:
    """Score the split, gather, write the report (rank 0); returns the report on every rank."""
    rank, world = session.rank, session.world_size
    loop.require_shards(cfg)
    # The clip the loader cuts is the model's: its card's architecture was adopted on the driver.
    model, card = load_classifier(cfg.model.init, cfg.model, cfg.tracking.tracking_uri or None)
    index = ShardIndex.load(cfg.data.shards)
    names = card.class_names or list(index.labels)
    if len(names) != model.num_classes:
        raise DataError(f"the model has {model.num_classes} outputs but {len(names)} class names are known")
    if index.labels and card.class_names and list(index.labels) != card.class_names:
        raise DataError(f"the shards' labels {list(index.labels)[:5]} differ from the model's {card.class_names[:5]}")
    dtype = torch.bfloat16 if cfg.eval.precision == "bf16" else torch.float32
    device = comm.training_device()  # the GPU this rank reserved, not the CPU the weights loaded on
    model.to(device, dtype)
    tracker = loop.start_tracker(cfg, "evaluate", rank, world, device, model=cfg.model.init)
    status = "FAILED"
    try:
        t0 = time.monotonic()
        loader = eval_loader(cfg.data, rank, world, require_labels=True)
        result = evaluate_pass(model, loader, dtype, chunk=cfg.eval.view_chunk)
        report = result.report(names, cfg.eval.topk)
        report.update(split=cfg.data.split, shards=cfg.data.shards, model=cfg.model.init,
                      num_clips=cfg.data.test_num_clips, num_crops=cfg.data.test_num_crops,
                      seconds=round(time.monotonic() - t0, 2), world_size=world)
        if rank == 0:
            _write(cfg, report, tracker)
        status = "FINISHED"
    finally:
        tracker.end(status)
    return report


def _write(cfg: EvaluateConfig, report: dict[str, Any], tracker: Any) -> None:
    picture = confusion_picture(report["confusion"], report["class_names"])
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "confusion.png"
        Image.fromarray(picture).save(png)
        tracker.log_artifact(png)  # first: upload_file moves the file (a local output is a rename)
        sio.upload_file(png, sio.join(cfg.run.output, "confusion.png"))
    sio.write_text(sio.join(cfg.run.output, "report.json"), json.dumps(report, indent=1))
    tracker.log_dict(report, "report.json")
    tracker.log_metrics({k: report[k] for k in report if k.startswith("top") or k == "mean_class_accuracy"}, 0)
    log.info("top-1 %.4f  top-5 %.4f  over %d videos x %d views", report["top1"], report.get("top5", float("nan")),
             report["num_videos"], report["views_per_video"])
