"""Remux vs transcode: what ``shard.remux`` saves on H.264 sources already within the limits.

The same H.264 sources (yuv420p, short side <= 320: what ``shard.remux`` copies) go through
``pipeline.data.ingest.ingest`` twice per round, once with ``remux = true`` (stream copy into a
fresh MP4, then a decode check of three frames) and once with ``remux = false`` (decode,
re-encode with x264 at crf 23, probe). Interleaved rounds, medians; one process, one core.
Figures: videos/s remux / transcode, and output bytes remux / transcode (the re-encode's
generation loss is the other price, not measured here: remuxed frames are bit-identical to the
source's, ``tests/unit/test_clips.py``).

    python -m benchmarks.bench_ingest            # 8 sources, 320x240, 20 s at 25 fps
    python -m benchmarks.bench_ingest --quick    # 2 sources, 64x48, 2 s (smoke test)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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

OUT = RESULTS / "ingest.json"


def sources(root: Path, count: int, seconds: int, size: tuple[int, int], fps: int = 25) -> list[Path]:
    """H.264 sources of moving noise-free gradients (cached between runs)."""
    from pipeline.video.encode import H264Writer

    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = root / f"src{i}.mp4"
        if not path.exists():
            yy, xx = np.mgrid[0:h, 0:w]
            writer = H264Writer(w, h, fps)
            for t in range(seconds * fps):
                r = ((xx + 3 * t + 17 * i) % 256).astype(np.uint8)
                g = ((yy + 2 * t) % 256).astype(np.uint8)
                b = (((xx + yy) // 2 + t * (i + 1)) % 256).astype(np.uint8)
                writer.write(np.stack([r, g, b], -1))
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(writer.finish())
            tmp.rename(path)
        out.append(path)
    return out


def run_ingest(paths: list[Path], remux: bool, sizes: list[int], kinds: set[str]) -> Callable[[], float]:
    from pipeline.data.ingest import IngestOptions, ingest
    from pipeline.data.manifest import ManifestEntry

    opts = IngestOptions(remux=remux)

    def run() -> float:
        sizes.clear()
        t0 = time.perf_counter()
        for p in paths:
            result = ingest(ManifestEntry(str(p)), p.stem, None, opts)
            if isinstance(result, str):
                raise RuntimeError(f"{p}: {result}")
            sample = result.samples[0]
            sizes.append(len(sample.mp4))
            kinds.add(sample.meta["encode"])
        return len(paths) / (time.perf_counter() - t0)
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="2 sources of 64x48, 2 s, 1 round (smoke test)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.sources, args.seconds, args.size, args.reps = 2, 2, (48, 64), 1
    started, load_before = time.time(), load_avg()
    h, w = args.size
    paths = sources(CACHE / f"ingest_{args.sources}s_{args.seconds}x{w}x{h}", args.sources, args.seconds, (h, w))
    source_bytes = sum(q.stat().st_size for q in paths)
    bytes_out: dict[str, list[int]] = {"remux": [], "transcode": []}
    kinds: dict[str, set[str]] = {"remux": set(), "transcode": set()}
    cases = {name: run_ingest(paths, name == "remux", bytes_out[name], kinds[name]) for name in ("remux", "transcode")}
    print(f"ingesting {args.sources} H.264 sources {w}x{h}, {args.seconds} s at 25 fps: remux vs transcode", flush=True)
    values = interleaved(cases, args.reps, warmup=0 if args.quick else 1)
    if kinds != {"remux": {"remux"}, "transcode": {"transcode"}}:
        raise RuntimeError(f"the cases did not do what they say: {kinds}")
    med = medians(values)
    out_bytes = {k: sum(v) for k, v in bytes_out.items()}
    detail = (f"{args.sources} H.264 yuv420p sources {w}x{h}, {args.seconds} s at 25 fps ({source_bytes:,} bytes); "
              "ingest() in one process; remux = stream copy + 3-frame decode check, transcode = x264 crf 23")
    figures = [
        figure("ingest: remux / transcode, H.264 sources within the limits", med["remux"], med["transcode"],
               "videos/s", "shard.remux = false (decode and re-encode every video)", detail=detail,
               ratio=paired_ratio(values, "remux", "transcode")),
        figure("ingest: output bytes, remux / transcode", out_bytes["remux"], out_bytes["transcode"], "bytes",
               "shard.remux = false (x264 crf 23, veryfast)", detail="remux keeps the source's bytes per frame; "
               "< 1: remux writes less"),
    ]
    body = {"sources": args.sources, "seconds": args.seconds, "size_hw": [h, w], "source_bytes": source_bytes,
            "output_bytes": out_bytes, "values": values, "medians": med, "figures": figures}
    result = write_result(Path(args.out), "ingest", command("benchmarks.bench_ingest", argv), started, load_before, body)
    for f in figures:
        print(f"  {f['name']}: {f['ratio']:.3g}x ({f['ours']:.4g} vs {f['baseline']:.4g} {f['unit']})")
    return result


if __name__ == "__main__":
    main()
