"""Pre-training step time (forward + backward): our model vs the eager reference, dual vs V1 masking.

The reference is the same architecture with plain softmax attention (``attn_impl="eager"``)
and the official embed-everything-then-gather order (``embed_visible_only=False``).

Every case runs once per round, rounds interleaved, so a busy spell on the shared machine hits
all cases of a round alike. Each figure is a **paired** ratio: baseline / ours within each round,
then the median over rounds, with the min-max spread of the per-round ratios shown. Only like-for-like
pairs are figures: ours vs the eager reference at the same masking (same work, other kernels and
embed order), and dual vs V1 masking of our model (same kernels, less decoder work).

    python -m benchmarks.bench_model                 # ViT-S and ViT-B, 16x224, batch 1, 5 rounds
    python -m benchmarks.bench_model --quick         # tiny sizes (smoke test)
    python -m benchmarks.bench_model --models vit_s --batch 2 --reps 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import command, figure, load_avg, write_result
from pipeline.data.masking import MaskConfig, make_masks
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
    """Every step time of every (variant, decoder ratio), rep by rep; the cases are interleaved so
    that load from other processes on a shared machine hits them all alike."""
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


# (figure name, ours (variant, decoder ratio), baseline (variant, decoder ratio), what the baseline is)
PAIRS = (
    ("ours / eager reference, dual masking", ("ours", 0.5), ("eager_ref", 0.5),
     "same model and masks: eager attention, embed-all (official order)"),
    ("ours / eager reference, V1 masking", ("ours", 0.0), ("eager_ref", 0.0),
     "same model and masks: eager attention, embed-all (official order)"),
    ("dual / V1 masking (ours)", ("ours", 0.5), ("ours", 0.0), "our model, same kernels, no decoder masking"),
)


def paired(ours: list[float], base: list[float]) -> list[float]:
    """baseline / ours per round (times: > 1 favours ours)."""
    return [b / o for o, b in zip(ours, base, strict=True)]


def ratios(rows: list[dict]) -> list[dict]:
    """Per model and pair: the per-round ratios, their median and min-max spread."""
    t = {(r["model"], r["variant"], r["decoder_ratio"]): r["all_s"] for r in rows}
    out = []
    for m in dict.fromkeys(r["model"] for r in rows):
        for name, ours, base, what in PAIRS:
            per_rep = paired(t[(m, *ours)], t[(m, *base)])
            out.append({"model": m, "pair": name, "ours": list(ours), "baseline": list(base), "baseline_is": what,
                        "per_rep": per_rep, "median": statistics.median(per_rep), "min": min(per_rep),
                        "max": max(per_rep)})
    return out


def figures(rows: list[dict], pairs: list[dict], threads: int) -> list[dict[str, Any]]:
    """The table rows: the paired median ratio, medians of both sides, the spread in the detail."""
    t = {(r["model"], r["variant"], r["decoder_ratio"]): r for r in rows}
    out = []
    for p in pairs:
        ours, base = t[(p["model"], *p["ours"])], t[(p["model"], *p["baseline"])]
        out.append(figure(f"step {p['model']} {ours['input']}: {p['pair']}", ours["step_s"], base["step_s"],
                          "s/step (ratio = baseline / ours, paired per round)", p["baseline_is"],
                          detail=f"median of {len(p['per_rep'])} per-round ratios, spread {p['min']:.2f}-"
                                 f"{p['max']:.2f}; batch {ours['batch']}, {threads} threads",
                          ratio=p["median"]))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_s,vit_b", help="comma-separated sizes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds kept (at least 5 for a figure)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="vit_tiny at 4x64, one rep (smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if not args.quick and args.reps < 5:
        parser.error(f"--reps {args.reps}: a paired median needs at least 5 rounds; use --reps 5 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = time.time(), load_avg()
    arch = dict(num_frames=4, img_size=64) if args.quick else {}
    names = ["vit_tiny"] if args.quick else args.models.split(",")
    reps, warmup = (1, 1) if args.quick else (args.reps, args.warmup)
    rows = [r for name in names for r in bench_size(name, args.batch, reps, warmup, **arch)]
    pairs = ratios(rows)
    threads = torch.get_num_threads()
    body = {"threads": threads, "reps": reps, "rows": rows, "ratios": pairs, "figures": figures(rows, pairs, threads)}
    for p in pairs:
        print(f"{p['model']:8s} {p['pair']:40s} {p['median']:5.2f}x  (per round {p['min']:.2f}-{p['max']:.2f})")
    return write_result(Path(args.out), "model_step", command("benchmarks.bench_model", argv), started, load_before,
                        body)


if __name__ == "__main__":
    main()
