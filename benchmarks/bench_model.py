"""Pre-training step time (forward + backward): our model vs the eager reference, dual vs V1 masking.

The reference is the same architecture with plain softmax attention (``attn_impl="eager"``)
and the official embed-everything-then-gather order (``embed_visible_only=False``).

    python -m benchmarks.bench_model                 # ViT-S and ViT-B, 16x224, batch 1
    python -m benchmarks.bench_model --quick         # tiny sizes (smoke test)
    python -m benchmarks.bench_model --models vit_s --batch 2 --reps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from pipeline.masking import MaskConfig, make_masks
from pipeline.models import create_model
from pipeline.models.flops import pretrain_macs

RESULTS = Path(__file__).resolve().parent / "results" / "model_step.json"
VARIANTS = {"ours": dict(attn_impl="sdpa", embed_visible_only=True),
            "eager_ref": dict(attn_impl="eager", embed_visible_only=False)}


def one_step(model: torch.nn.Module, video: torch.Tensor, enc: torch.Tensor, dec: torch.Tensor | None) -> float:
    """Wall time of one forward + backward (grads cleared first)."""
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(video, enc, dec).backward()
    return time.perf_counter() - start


def bench_size(name: str, batch: int, reps: int, warmup: int, **arch: int) -> list[dict]:
    """Median step time of every (variant, decoder ratio); the cases are interleaved rep by rep
    so that load from other processes on a shared machine hits them all alike."""
    cases = []
    for variant, options in VARIANTS.items():
        torch.manual_seed(0)
        model = create_model(name, **arch, **options)
        spec = model.spec
        for dec_ratio in (0.5, 0.0):
            enc, dec = make_masks(MaskConfig(decoder_ratio=dec_ratio), batch, spec.grid, torch.Generator().manual_seed(0))
            cases.append((variant, options, dec_ratio, model, enc, dec if dec_ratio else None))
    video = torch.randn(batch, 3, spec.num_frames, spec.img_size, spec.img_size)
    times: list[list[float]] = [[] for _ in cases]
    for i in range(warmup + reps):
        for case, bucket in zip(cases, times):
            secs = one_step(case[3], video, case[4], case[5])
            if i >= warmup:
                bucket.append(secs)
    rows = []
    for (variant, options, dec_ratio, *_), bucket in zip(cases, times):
        secs = statistics.median(bucket)
        macs = pretrain_macs(spec, 0.9, dec_ratio, embed_all_tokens=not options["embed_visible_only"]).total
        rows.append({"model": name, "variant": variant, "decoder_ratio": dec_ratio, "batch": batch,
                     "input": f"{spec.num_frames}x{spec.img_size}", "step_s": secs, "all_s": bucket,
                     "achieved_gflops": 6 * macs * batch / secs / 1e9})
        print(f"  {name} {variant:9s} dec={dec_ratio:.1f}: {secs * 1e3:9.1f} ms", flush=True)
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    """Speed-ups per model: ours vs eager (each masking), dual vs V1 (each variant)."""
    t = {(r["model"], r["variant"], r["decoder_ratio"]): r["step_s"] for r in rows}
    out = []
    for m in dict.fromkeys(r["model"] for r in rows):
        out.append({"model": m,
                    "ours_vs_eager_dual": t[m, "eager_ref", 0.5] / t[m, "ours", 0.5],
                    "ours_vs_eager_v1": t[m, "eager_ref", 0.0] / t[m, "ours", 0.0],
                    "dual_vs_v1_ours": t[m, "ours", 0.0] / t[m, "ours", 0.5],
                    "dual_vs_v1_eager": t[m, "eager_ref", 0.0] / t[m, "eager_ref", 0.5],
                    "ours_dual_vs_eager_v1": t[m, "eager_ref", 0.0] / t[m, "ours", 0.5]})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_s,vit_b", help="comma-separated sizes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 4x64, one rep (smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = dict(num_frames=4, img_size=64) if args.quick else {}
    names = ["vit_tiny"] if args.quick else args.models.split(",")
    reps, warmup = (1, 1) if args.quick else (args.reps, args.warmup)
    rows = [r for name in names for r in bench_size(name, args.batch, reps, warmup, **arch)]
    result = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "rows": rows, "ratios": ratios(rows)}
    print(f"\n{'model':8s} {'ours/eager dual':>16s} {'ours/eager V1':>14s} {'dual/V1 ours':>13s} {'dual/V1 eager':>14s}")
    for r in result["ratios"]:
        print(f"{r['model']:8s} {r['ours_vs_eager_dual']:15.2f}x {r['ours_vs_eager_v1']:13.2f}x "
              f"{r['dual_vs_v1_ours']:12.2f}x {r['dual_vs_v1_eager']:13.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
