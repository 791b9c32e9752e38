"""Achieved FLOP/s of a pre-training step against this machine's matmul ceiling, same thread count.

The step is ``benchmarks.bench_model``'s (our model, forward + backward, batch 1, 16x224); its
FLOPs are ``pipeline.models.flops.pretrain_macs`` x 2 (FLOPs per MAC) x 3 (forward + backward),
counting what our model executes (visible-only embedding). The ceiling is a large fp32
``torch.mm`` (2 n^3 FLOPs). Step and matmul are timed in interleaved rounds (the machine is
shared); ratio = median achieved / median ceiling. Also reported: the same ratio for the
``model_step.json`` that ``bench_model`` wrote, when its thread count matches.

    python -m benchmarks.bench_flops                 # vit_s, vit_b; dual (0.5) and V1 (0) decoder masking
    python -m benchmarks.bench_flops --quick         # vit_tiny at 4x64 (smoke test)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_model import VARIANTS, one_step
from benchmarks.common import RESULTS, command, figure, interleaved, load_avg, medians, paired_ratio, write_result
from pipeline.data.masking import MaskConfig, make_masks
from pipeline.models import create_model
from pipeline.models.flops import pretrain_macs

OUT = RESULTS / "flops.json"


def matmul_gflops(n: int, iters: int) -> Callable[[], float]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)

    def run() -> float:
        start = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        return 2 * n**3 * iters / (time.perf_counter() - start) / 1e9
    return run


def step_gflops(name: str, dec_ratio: float, arch: dict[str, int]) -> tuple[Callable[[], float], float]:
    """A timed step of our model -> achieved GFLOP/s; also returns the FLOPs per step."""
    torch.manual_seed(0)
    model = create_model(name, **arch, **VARIANTS["ours"])
    spec = model.spec
    enc, dec = make_masks(MaskConfig(decoder_ratio=dec_ratio), 1, spec.grid, torch.Generator().manual_seed(0))
    video = torch.randn(1, 3, spec.num_frames, spec.img_size, spec.img_size)
    flops = 6.0 * pretrain_macs(spec, 0.9, dec_ratio, embed_all_tokens=False).total

    def run() -> float:
        return flops / one_step(model, video, enc, dec if dec_ratio else None) / 1e9
    return run, flops


def from_model_step(path: Path, threads: int, ceiling: float) -> list[dict[str, Any]]:
    """achieved / ceiling for bench_model's recorded rows (same thread count only)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("threads") != threads:
        return [{"skipped": f"{path.name} was measured with {data.get('threads')} threads, not {threads}"}]
    return [{"model": r["model"], "variant": r["variant"], "decoder_ratio": r["decoder_ratio"],
             "achieved_gflops": r["achieved_gflops"], "ratio": r["achieved_gflops"] / ceiling}
            for r in data.get("rows", [])]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_s,vit_b")
    p.add_argument("--threads", type=int, default=0, help="torch threads for step and matmul (0 = torch default)")
    p.add_argument("--n", type=int, default=2048, help="matmul size n (n x n @ n x n, fp32)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="vit_tiny at 4x64, n=512, 1 round (smoke test)")
    p.add_argument("--model-step", default=str(RESULTS / "model_step.json"), help="bench_model's results to cross-check")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    started, load_before = time.time(), load_avg()
    names = ["vit_tiny"] if args.quick else args.models.split(",")
    arch = dict(num_frames=4, img_size=64) if args.quick else {}
    n, reps = (512, 1) if args.quick else (args.n, args.reps)
    cases: dict[str, Callable[[], float]] = {"matmul": matmul_gflops(n, iters=3)}
    step_flops = {}
    for name in names:
        for dec_ratio in (0.5, 0.0):
            key = f"{name}_dec{dec_ratio}"
            cases[key], step_flops[key] = step_gflops(name, dec_ratio, arch)
    print(f"achieved vs matmul FLOP/s, {threads} threads, {reps} interleaved rounds", flush=True)
    values = interleaved(cases, reps, warmup=1)
    med = medians(values)
    ceiling = med["matmul"]
    figures = []
    for key in step_flops:
        name, dec = key.rsplit("_dec", 1)
        masking = "dual masking" if float(dec) else "V1 masking"
        figures.append(figure(f"step FLOP/s {name} {masking}: achieved / matmul ceiling", med[key], ceiling,
                              "GFLOP/s", f"fp32 torch.mm {n}x{n}, {threads} threads",
                              detail=f"{step_flops[key] / 1e9:.1f} GFLOP per step (batch 1), "
                                     f"{step_flops[key] / med[key] / 1e9:.2f} s",
                              ratio=paired_ratio(values, key, "matmul")))
    body = {"threads": threads, "matmul_n": n, "values": values, "medians": med,
            "step_gflop": {k: v / 1e9 for k, v in step_flops.items()}, "figures": figures,
            "from_model_step": from_model_step(Path(args.model_step), threads, ceiling)}
    result = write_result(Path(args.out), "flops", command("benchmarks.bench_flops", argv), started, load_before, body)
    for f in figures:
        print(f"  {f['name']:58s} {f['ratio']:6.3f}  ({f['ours']:.1f} of {f['baseline']:.1f} GFLOP/s)")
    return result


if __name__ == "__main__":
    main()
