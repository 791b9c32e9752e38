"""Classify video files with a registered (or exported) classifier.

    python -m jobs.predict --model models:/motion-vit@champion clip.mp4 [more.mp4 ...] [--top-k 5] [--json]

``--model`` also takes a model folder (``<finetune run>/export/best``) or a fine-tuning run
folder. The tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the
embedded ``sqlite:///runs/mlflow.db``. A video that cannot be decoded gives one line on stderr
(exit status 2), after the others are classified.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from jobs._cli import ListOptions
from pipeline.core.errors import TubeletError, VideoError
from pipeline.infra.tracking import TrackingConfig, resolve_uri


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs.predict", description="top-k classes of video files")
    parser.add_argument("--model", required=True, help="models:/name@alias, models:/name/N, runs:/<run_id>/<path>, "
                        "or a model or fine-tuning run folder (local or s3://)")
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to print per video")
    parser.add_argument("--num-clips", type=int, default=0, help="temporal clips (0 = as the model card says)")
    parser.add_argument("--num-crops", type=int, default=0, help="spatial crops (0 = as the model card says)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking / registry URI")
    parser.add_argument("--json", action="store_true", help="one JSON object per video")
    parser.add_argument("--list-keys", action=ListOptions)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # stdout / stderr carry the answers and the one-line errors: no download progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from pipeline.train.inference import predict_video
        from pipeline.train.model_registry import load_classifier

        model, card = load_classifier(args.model, tracking=resolve_uri(TrackingConfig(tracking_uri=args.tracking_uri)))
    except TubeletError as exc:
        print(f"jobs.predict: error: {exc}", file=sys.stderr)
        return 2
    status = 0
    for video in args.videos:
        try:
            top = predict_video(model, card, video, args.top_k, args.num_clips, args.num_crops)
        except VideoError as exc:
            print(f"jobs.predict: error: {exc}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(json.dumps({"video": video, "top": [{"label": n, "prob": round(p, 6)} for n, p in top]}))
        else:
            print(f"{video}: " + ", ".join(f"{n} {p:.3f}" for n, p in top))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
