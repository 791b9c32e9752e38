"""Encoder features for every video of a shard split, for downstream use (retrieval, detection heads).

Each rank reads its share of the split once (:func:`~pipeline.data.loader.eval_loader`:
``test_num_clips x test_num_crops`` views per video), runs ``Classifier.forward_features`` on
every view (mean over tokens, then ``fc_norm``: ``[views, D]``) and pools the views:

- ``pooled``: one row per video, the mean over all its views;
- ``per_clip``: one row per temporal clip, the mean over that clip's spatial crops.

Rows go to ``<output>/features/part-{rank:05d}.{parquet,npz}`` (sorted by key, clip) with a small
``part-{rank:05d}.json`` of counts; the launcher (``jobs.extract``) then writes
``<output>/manifest.json``. Parquet columns: ``key`` string, ``split`` string, ``label`` int64
(-1 = unlabelled), ``clip`` int32 (``per_clip`` only), ``feature`` fixed_size_list<float32>[D].
NPZ arrays: the same names, ``feature`` as one float32 ``[rows, D]`` matrix.
:func:`read_features` reads either back, all parts, sorted by (key, clip).

The per-rank loop is ``extract(cfg, session)``, the shape of every loop (rank and world size come
from the session; it writes no checkpoints). No collective is used: ranks never wait for each
other, and the result does not depend on the number of ranks (the same weights on every rank;
random init is seeded with ``run.seed``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from pipeline.core import io as sio
from pipeline.core.errors import DataError
from pipeline.data.loader import eval_loader
from pipeline.models import create_model_from_config
from pipeline.models.model_config import ClassifierConfig, init_weights
from pipeline.train import comm
from pipeline.train.batch import model_input
from pipeline.train.job_configs import ExtractConfig, ExtractMode
from pipeline.train.model_registry import load_classifier, model_folder, read_card, weights_file
from pipeline.train.session import Session

log = logging.getLogger(__name__)

Mode = ExtractMode
FEATURES_DIR = "features"
MANIFEST = "manifest.json"


@dataclass
class FeatureTable:
    """Rows of features: ``features [N, D]`` float32; ``clips`` is -1 for pooled rows."""

    keys: list[str]
    labels: np.ndarray
    clips: np.ndarray
    features: np.ndarray
    split: str = ""

    def __len__(self) -> int:
        return len(self.keys)

    def sorted(self) -> FeatureTable:
        order = sorted(range(len(self.keys)), key=lambda i: (self.keys[i], int(self.clips[i])))
        return FeatureTable([self.keys[i] for i in order], self.labels[order], self.clips[order],
                            self.features[order], self.split)


# ------------------------------------------------------------------------------------------
# Pure parts


def pool_views(features: torch.Tensor, num_clips: int, num_crops: int, mode: Mode) -> torch.Tensor:
    """``features [B, V, D]`` (V = clips x crops, clip-major as the loader cuts them) ->
    ``[B, 1, D]`` (pooled) or ``[B, num_clips, D]`` (per_clip)."""
    b, v, d = features.shape
    if v != num_clips * num_crops:
        raise ValueError(f"{v} views per video, expected {num_clips} clips x {num_crops} crops")
    per_clip = features.view(b, num_clips, num_crops, d).mean(dim=2)
    return per_clip if mode == "per_clip" else per_clip.mean(dim=1, keepdim=True)


@torch.no_grad()
def view_features(model: nn.Module, video: torch.Tensor, dtype: torch.dtype = torch.float32,
                  chunk: int = 0) -> torch.Tensor:
    """uint8 ``video [B, V, T, H, W, C]`` -> float32 ``[B, V, D]`` on the CPU (``model.forward_features`` per
    view). Inputs go to the model's device here and nowhere else."""
    b, v = video.shape[:2]
    device = next(model.parameters()).device
    flat = video.flatten(0, 1)
    chunk = chunk or flat.shape[0]
    parts = [model.forward_features(model_input(flat[i:i + chunk], device, dtype)[0]).float()
             for i in range(0, len(flat), chunk)]
    return torch.cat(parts).view(b, v, -1).cpu()


def extract_pass(model: nn.Module, batches: Iterable[dict[str, Any]], num_clips: int, num_crops: int,
                 mode: Mode, dtype: torch.dtype = torch.float32, chunk: int = 0) -> FeatureTable:
    """Feature rows of every video in ``batches`` (this rank's share; no collective)."""
    model.eval()
    keys: list[str] = []
    labels, clips, feats = [], [], []
    for batch in batches:
        pooled = pool_views(view_features(model, batch["video"], dtype, chunk), num_clips, num_crops, mode)
        b, rows, _ = pooled.shape
        feats.append(pooled.flatten(0, 1).numpy())
        keys.extend(k for k in batch["keys"] for _ in range(rows))
        labels.append(batch["label"].long().repeat_interleave(rows).numpy())
        clips.append(np.tile(np.arange(rows, dtype=np.int32) if mode == "per_clip" else np.array([-1], np.int32), b))
    if not feats:
        return FeatureTable([], np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 0), np.float32))
    return FeatureTable(keys, np.concatenate(labels), np.concatenate(clips), np.concatenate(feats)).sorted()


# ------------------------------------------------------------------------------------------
# Files


def part_name(rank: int, fmt: str) -> str:
    return f"part-{rank:05d}.{fmt}"


def encode_part(table: FeatureTable, fmt: str, mode: Mode) -> bytes:
    """A feature part as Parquet or NPZ bytes (see the module docstring for the columns)."""
    if fmt == "npz":
        buf = io.BytesIO()
        arrays = {"key": np.array(table.keys, dtype=str), "split": np.array(table.split), "label": table.labels,
                  "feature": table.features}
        if mode == "per_clip":
            arrays["clip"] = table.clips
        np.savez(buf, **arrays)
        return buf.getvalue()
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = table.features.shape[1] if table.features.ndim == 2 else 0
    columns = {"key": pa.array(table.keys, pa.string()), "split": pa.array([table.split] * len(table), pa.string()),
               "label": pa.array(table.labels, pa.int64())}
    if mode == "per_clip":
        columns["clip"] = pa.array(table.clips, pa.int32())
    values = pa.array(table.features.reshape(-1), pa.float32())
    columns["feature"] = pa.FixedSizeListArray.from_arrays(values, dim) if dim else pa.array([], pa.list_(pa.float32()))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def decode_part(data: bytes, fmt: str) -> FeatureTable:
    if fmt == "npz":
        z = np.load(io.BytesIO(data))
        clips = z["clip"] if "clip" in z.files else np.full(len(z["key"]), -1, np.int32)
        return FeatureTable([str(k) for k in z["key"]], z["label"], clips, z["feature"].astype(np.float32),
                            str(z["split"]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(pa.BufferReader(data))
    n = t.num_rows
    flat = t.column("feature").combine_chunks().flatten().to_numpy() if n else np.zeros(0, np.float32)
    clips = t.column("clip").to_numpy() if "clip" in t.column_names else np.full(n, -1, np.int32)
    split = t.column("split")[0].as_py() if n else ""
    return FeatureTable(t.column("key").to_pylist(), t.column("label").to_numpy(), clips,
                        flat.astype(np.float32).reshape(n, -1), split)


def read_features(output: str) -> FeatureTable:
    """Every part under ``<output>/features/``, concatenated and sorted by (key, clip)."""
    folder = sio.join(output, FEATURES_DIR)
    parts = [p for p in sio.listdir(folder) if p.endswith((".parquet", ".npz"))]
    if not parts:
        raise DataError(f"no feature parts in {folder}")
    tables = [decode_part(sio.read_bytes(sio.join(folder, os.path.basename(p))), p.rsplit(".", 1)[1])
              for p in sorted(parts)]
    return FeatureTable([k for t in tables for k in t.keys], np.concatenate([t.labels for t in tables]),
                        np.concatenate([t.clips for t in tables]),
                        np.concatenate([t.features for t in tables if len(t)]), tables[0].split).sorted()


# ------------------------------------------------------------------------------------------
# Model


def resolve_model(spec: str, tracking_uri: str = "") -> str:
    """``model.init`` -> a model folder (registry, fine-tuning run / model folder) or a weights file; ''
    and ``random`` (no weights) stay as they are."""
    if not init_weights(spec):
        return spec
    folder = model_folder(spec, tracking_uri or None)  # registry URIs are downloaded here, once
    if folder:
        return folder
    return weights_file(spec)


def model_arch(cfg: ExtractConfig) -> ClassifierConfig:
    """The ``[model]`` section the features come from: the model folder's card, else ``cfg.model``."""
    init = cfg.model.init
    if init and model_folder(init):  # a model folder (local or s3:), not a weights file
        return read_card(init).model_config()
    return cfg.model


def load_encoder(cfg: ExtractConfig) -> tuple[nn.Module, str]:
    """The classifier whose ``forward_features`` gives the features, in eval mode, and a description."""
    if not init_weights(cfg.model.init):  # '' or "random"
        torch.manual_seed(cfg.run.seed)  # the same random weights on every rank and every run
        model = create_model_from_config(cfg.model, "classify")
        return model.eval(), f"random init ({cfg.model.name}, seed {cfg.run.seed})"
    model, _ = load_classifier(cfg.model.init, cfg.model, cfg.tracking.tracking_uri or None)
    return model, cfg.model.init


# ------------------------------------------------------------------------------------------
# Per rank


def extract(cfg: ExtractConfig, session: Session) -> dict[str, Any]:
    """Extract this rank's share and write its part + counts; returns the counts."""
    t0 = time.monotonic()
    rank, world = session.rank, session.world_size
    model, described = load_encoder(cfg)
    device = comm.training_device() if cfg.scaling.use_gpu else torch.device("cpu")  # this rank's own GPU
    dtype = torch.bfloat16 if cfg.extract.precision == "bf16" else torch.float32
    model.to(device, dtype)
    loader = eval_loader(cfg.data, rank, world, require_labels=False)
    table = extract_pass(model, loader, cfg.data.test_num_clips, cfg.data.test_num_crops, cfg.extract.mode,
                         dtype, cfg.extract.view_chunk)
    table.split = cfg.data.split
    folder = sio.join(cfg.run.output, FEATURES_DIR)
    fmt = cfg.extract.format
    sio.write_bytes(sio.join(folder, part_name(rank, fmt)), encode_part(table, fmt, cfg.extract.mode))
    counts = {"rank": rank, "rows": len(table), "videos": len(set(table.keys)),
              "dim": int(table.features.shape[1]) if len(table) else 0, "model": described,
              "decode_errors": loader.stats.decode_errors, "samples_lost": loader.stats.samples_lost,
              "seconds": round(time.monotonic() - t0, 2)}
    sio.write_text(sio.join(folder, part_name(rank, "json")), json.dumps(counts))
    log.info("rank %d: %d rows of %d videos (dim %d) in %.1fs", rank, counts["rows"], counts["videos"],
             counts["dim"], counts["seconds"])
    return counts


def clear_parts(output: str) -> None:
    """Remove the parts of an earlier run (another worker count would leave stale ones behind)."""
    folder = sio.join(output, FEATURES_DIR)
    if sio.exists(folder):
        for p in sio.listdir(folder):
            sio.remove(sio.join(folder, os.path.basename(p)))


def build_manifest(cfg: ExtractConfig, num_samples: int) -> dict[str, Any]:
    """``manifest.json`` from the ranks' counts; DataError when a rank wrote nothing."""
    folder = sio.join(cfg.run.output, FEATURES_DIR)
    counts = [json.loads(sio.read_text(sio.join(folder, part_name(r, "json")))) for r in range(cfg.scaling.num_workers)]
    dims = {c["dim"] for c in counts if c["rows"]}
    if len(dims) != 1:
        raise DataError(f"feature parts disagree on the dimension or are all empty: {sorted(dims)}")
    errors = sum(c["decode_errors"] + c["samples_lost"] for c in counts)
    return {"rows": sum(c["rows"] for c in counts), "videos": sum(c["videos"] for c in counts),
            "videos_expected": num_samples, "failed_videos": errors, "dim": dims.pop(), "mode": cfg.extract.mode,
            "format": cfg.extract.format, "model": counts[0]["model"], "arch": asdict(model_arch(cfg)),
            "feature": "Classifier.forward_features: mean over tokens, fc_norm; views averaged per mode",
            "shards": cfg.data.shards, "split": cfg.data.split, "num_clips": cfg.data.test_num_clips,
            "num_crops": cfg.data.test_num_crops, "num_frames": cfg.data.num_frames,
            "sampling_rate": cfg.data.sampling_rate, "input_size": cfg.data.input_size,
            "precision": cfg.extract.precision,
            "parts": [f"{FEATURES_DIR}/{part_name(c['rank'], cfg.extract.format)}" for c in counts],
            "seconds": max(c["seconds"] for c in counts)}
