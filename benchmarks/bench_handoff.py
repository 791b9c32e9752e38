"""Loader -> training hand-off: uint8 clips normalised on the training device vs float32 from the workers.

Two measurements, each case interleaved round by round with its baseline (medians, paired ratios):

- **loader**: the real pre-training stream (``TrainStream``: read shard -> decode -> k crops ->
  batch + masks) in ONE DataLoader worker process, so every batch crosses shared memory as in
  training; clips/s per core = clips per CPU-second of that worker (CPU time, not wall time: the
  machine may be shared). ``uint8``: the batches as shipped now. ``float32`` (the
  hand-off before): the same batches normalised to float32 in the worker, which is what the old
  collate did, and then shipped. Also bytes per clip through ``/dev/shm``.
- **training step**: vit_tiny pre-training (AdamW; forward, backward, step) on a batch of the
  same shape, fed through :func:`pipeline.train.batch.model_input` from uint8 (normalisation in
  the step, on the training device) vs from the already normalised float32 batch (the old
  ``.to(device, dtype)``). Here the device is this CPU: on a GPU the normalisation is a few
  elementwise kernels over the batch after a copy 4x smaller. Steps per CPU-second, one thread.

    python -m benchmarks.bench_handoff             # ~1-2 min on 2 cores (videos encoded once, cached)
    python -m benchmarks.bench_handoff --quick     # smoke test: tiny clips, one round
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from benchmarks.common import (
    CACHE,
    RESULTS,
    command,
    figure,
    interleaved,
    load_avg,
    medians,
    paired_ratio,
    write_result,
)

OUT = RESULTS / "handoff.json"


def make_shards(root: Path, videos: int, frames: int, h: int, w: int) -> Path:
    """``videos`` H.264 clips in one shard laid out as ``jobs.shard`` writes them (cached under ``root``)."""
    import webdataset as wds

    from pipeline.data.synthetic import render_frames
    from pipeline.video.encode import encode_h264
    from pipeline.video.probe import probe

    if (root / "index.json").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "train-000000.tar")) as sink:
        for i in range(videos):
            mp4 = encode_h264(render_frames(np.random.default_rng(i), "left", frames, h, w), 30.0, gop=15)
            sink.write({"__key__": f"v{i:04d}", "mp4": mp4, "json": json.dumps(probe(mp4).to_dict()).encode(),
                        "cls": b"0"})
    entries = [{"name": "train-000000.tar", "split": "train", "samples": videos, "bytes": 0, "sha256": ""}]
    (root / "index.json").write_text(json.dumps({"shards": entries, "labels": ["x"], "totals": {"samples": videos}}))
    return root


class Float32Handoff(IterableDataset):
    """The hand-off before: each batch's video normalised to float32 inside the worker, then shipped."""

    def __init__(self, stream: IterableDataset) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from pipeline.core.pixels import normalize_pixels
        from pipeline.train.batch import channels_first

        for batch in self.stream:
            batch["video"] = normalize_pixels(channels_first(batch["video"]))
            yield batch


def loader_batches(shards: Path, a: argparse.Namespace, float32: bool) -> Iterator[dict[str, Any]]:
    """An endless stream of pre-training batches from one worker process (shared-memory hand-off)."""
    from pipeline.data.loader import TrainDataConfig, pretrain_loader
    from pipeline.data.masking import MaskConfig, token_grid
    from pipeline.data.streams import TrainStream

    cfg = TrainDataConfig(shards=str(shards), num_frames=a.num_frames, sampling_rate=a.stride, input_size=a.input_size,
                          repeated_aug=a.views, batch_size=a.batch, num_workers=1, prefetch_factor=2, shuffle_buffer=4)
    loader = pretrain_loader(cfg, MaskConfig(), token_grid(a.num_frames, a.input_size, 16, 2))
    stream: IterableDataset = TrainStream(loader._plan())  # endless: the worker cycles over its shard
    return iter(DataLoader(Float32Handoff(stream) if float32 else stream, batch_size=None, num_workers=1,
                           prefetch_factor=2))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _settled(pid: int, quiet_s: float = 0.3, rounds: int = 3) -> float:
    """The worker's CPU seconds once it has gone idle (its prefetch queue full again)."""
    last, still = _cpu_s(pid), 0
    while still < rounds:
        time.sleep(quiet_s)
        now = _cpu_s(pid)
        still, last = (still + 1, last) if now == last else (0, now)
    return last


def clips_per_core_s(batches: Iterator[dict[str, Any]], clips: int) -> Callable[[], float]:
    """Clips per CPU-second of the worker process: robust to a busy shared machine.

    The window runs from an idle worker (queue full) through consuming ``clips`` to the worker
    idle again, so it has made exactly the batches consumed: its CPU time is theirs.
    """
    pid = batches._workers[0].pid  # type: ignore[attr-defined]  # one worker process

    def run() -> float:
        start, n = _settled(pid), 0
        while n < clips:
            n += next(batches)["video"].shape[0]
        return n / (_settled(pid) - start)
    return run


def clip_bytes(batch: dict[str, Any]) -> float:
    """Tensor bytes per clip of a batch (what crosses /dev/shm; keys and stats are pickled)."""
    return sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor)) / batch["video"].shape[0]


def step_cases(a: argparse.Namespace) -> dict[str, Callable[[], float]]:
    """Training steps/s of vit_tiny pre-training, uint8 -> model_input vs a pre-normalised float32 batch."""
    from pipeline.core.pixels import normalize_pixels
    from pipeline.data.masking import MaskConfig, make_masks, token_grid
    from pipeline.models import create_model
    from pipeline.train.batch import channels_first, model_input

    torch.manual_seed(0)
    size, t = a.step_size, a.num_frames
    model = create_model("vit_tiny", "pretrain", num_frames=t, img_size=size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    grid = token_grid(t, size, model.spec.patch_size, model.spec.tubelet_size)
    uint8 = torch.randint(0, 256, (a.step_batch, t, size, size, 3), dtype=torch.uint8)  # the loader's layout
    normalised = normalize_pixels(channels_first(uint8))
    enc, dec = make_masks(MaskConfig(), a.step_batch, grid, torch.Generator().manual_seed(0))

    def step(video: torch.Tensor) -> None:
        loss = model(video, enc, dec)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(feed: Callable[[], torch.Tensor]) -> Callable[[], float]:
        def run() -> float:  # steps per CPU-second of this (single-threaded) process
            start = time.process_time()
            for _ in range(a.steps):
                step(feed())
            return a.steps / (time.process_time() - start)
        return run

    return {"step_device_normalise": timed(lambda: model_input(uint8, "cpu", torch.float32)[0]),
            "step_pre_normalised": timed(lambda: normalised.to("cpu", torch.float32, non_blocking=True))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--video-frames", type=int, default=64)
    p.add_argument("--video-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--input-size", type=int, default=224, help="loader crop side")
    p.add_argument("--views", type=int, default=2, help="repeated_aug (k crops per decode)")
    p.add_argument("--batch", type=int, default=8, help="clips per loader batch")
    p.add_argument("--clips", type=int, default=48, help="clips per loader case per round")
    p.add_argument("--step-size", type=int, default=128, help="training step input side (a multiple of 32)")
    p.add_argument("--step-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="training steps per case per round")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny clips, one round (smoke test)")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    if a.quick:
        a.videos, a.video_frames, a.video_size, a.num_frames, a.input_size = 2, 16, (64, 96), 4, 32
        a.batch, a.clips, a.step_size, a.step_batch, a.steps, a.reps = 4, 8, 32, 2, 1, 1
    torch.set_num_threads(1)  # per core; loader workers run single-threaded as well
    started, load_before = time.time(), load_avg()
    h, w = a.video_size
    shards = make_shards(CACHE / f"handoff_motion_{a.videos}v_{a.video_frames}f_{w}x{h}", a.videos, a.video_frames, h, w)
    loaders = {"uint8": loader_batches(shards, a, float32=False), "float32": loader_batches(shards, a, float32=True)}
    sizes = {name: clip_bytes(next(it)) for name, it in loaders.items()}  # also starts both workers
    cases = {f"loader_{name}": clips_per_core_s(it, a.clips) for name, it in loaders.items()}
    cases.update(step_cases(a))
    print(f"hand-off: clips {a.num_frames}x{a.input_size} (k={a.views}, batch {a.batch}) through one worker; "
          f"vit_tiny step {a.num_frames}x{a.step_size} batch {a.step_batch}; {a.reps} interleaved rounds", flush=True)
    values = interleaved(cases, a.reps, warmup=1)
    med = medians(values)
    figures = [
        figure("hand-off: bytes per clip through /dev/shm, uint8 / float32", sizes["uint8"], sizes["float32"],
               "bytes/clip", "float32 clips normalised in the worker (before)",
               detail=f"video + masks + frame indices + label, {a.num_frames}x{a.input_size}"),
        figure("hand-off: loader clips/s per core, uint8 / float32", med["loader_uint8"], med["loader_float32"],
               "clips/s/core", "float32 clips normalised in the worker (before)",
               detail="clips per CPU-second of the one worker process (decode, crop, collate, hand-off)",
               ratio=paired_ratio(values, "loader_uint8", "loader_float32")),
        figure("hand-off: training step/s, normalised in the step / pre-normalised", med["step_device_normalise"],
               med["step_pre_normalised"], "steps/s", "a float32 batch normalised beforehand (the loader's, before)",
               detail=f"vit_tiny {a.num_frames}x{a.step_size}, batch {a.step_batch}, fp32, AdamW, on this CPU "
                      "(steps per CPU-second, one thread)",
               ratio=paired_ratio(values, "step_device_normalise", "step_pre_normalised")),
    ]
    body = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items() if k != "out"},
            "bytes_per_clip": sizes, "values": values, "medians": med, "figures": figures}
    result = write_result(Path(a.out), "handoff", command("benchmarks.bench_handoff", argv), started, load_before, body)
    for f in figures:
        print(f"  {f['name']:70s} {f['ratio']:6.3f}x  ({f['ours']:.4g} vs {f['baseline']:.4g} {f['unit']})")
    return result


if __name__ == "__main__":
    main()
