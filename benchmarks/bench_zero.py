"""ZeRO model-state memory per rank, stages 0-3 on 2 CPU ranks: measured against ``jobs.plan``'s estimate.

For each stage, two processes over gloo build a DeepSpeed engine with ``pipeline.infra.engine.build_engine``
(torch AdamW, the library's default buckets), run two optimizer steps (Adam allocates its state in
the first), and after the third backward -- parameters, gradients and optimizer states all alive --
count the bytes of every tensor storage alive in the process (``gc``, each storage once), split into
parameters (incl. ZeRO-3 partitions), gradients, optimizer states, fp32 master copies and other
buffers (flat partitions, reduction buckets). Also recorded: the RSS growth from before the model
was built. The estimate is ``jobs.plan.make_plan`` (ZeRO paper: fp32 4 + 4 + 8 bytes/param, bf16
2 + 2 + 12) at world size 2. Figure per stage: measured / estimated (1.0 = the plan is right).

    python -m benchmarks.bench_zero                       # vit_s, fp32, 8x128 input
    python -m benchmarks.bench_zero --precision bf16 --model vit_b
    python -m benchmarks.bench_zero --quick               # vit_tiny, stage 3 only (smoke test)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, command, figure, load_avg, write_result

OUT = RESULTS / "zero_memory.json"
MB = 1e6


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _storage(t: Any) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
    except Exception:  # meta tensors, sparse, ...
        return None
    return (s.data_ptr(), s.nbytes()) if s.nbytes() else None


def _named_tensors(obj: Any) -> dict[int, tuple[str, int]]:
    """Storage -> (attribute name, bytes) for the tensors an object holds directly or in lists / dicts."""
    import torch

    names: dict[int, tuple[str, int]] = {}

    def scan(name: str, value: Any, depth: int) -> None:
        if torch.is_tensor(value):
            if st := _storage(value):
                names.setdefault(st[0], (name, st[1]))
        elif isinstance(value, (list, tuple)):
            for item in value:
                scan(name, item, depth)
        elif isinstance(value, dict):
            for item in value.values():
                scan(name, item, depth)
        elif depth and hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
            for attr, item in vars(value).items():  # e.g. stage 3's gradient bucket objects
                scan(f"{name}.{attr}", item, depth - 1)

    for name, value in vars(obj).items():
        scan(name, value, 1)
    return names


def _role(name: str) -> str:
    """Role of an optimizer attribute by its (DeepSpeed) name."""
    low = name.lower()
    if "ipg" in low or "bucket" in low:
        return "comm_buckets"
    if "grad" in low:
        return "grads"
    if "fp32" in low or "master" in low:
        return "fp32_master"
    return "other"


def held_bytes(engine: Any) -> dict[str, Any]:
    """Bytes of every live tensor storage in this process, each counted once, by role.

    Roles: the model's parameters (ZeRO-3 partitions included), optimizer states (Adam m, v),
    fp32 master copies, gradients (``.grad`` and DeepSpeed's gradient partitions / flat buffers),
    communication buckets, other (pos-emb buffers, ...). ``model_states`` = the first four.
    """
    import torch

    def ptrs(tensors: Any) -> set[int]:
        return {st[0] for t in tensors if t is not None and (st := _storage(t))}

    params = list(engine.module.parameters())
    param_ptrs = ptrs(params) | ptrs(getattr(p, "ds_tensor", None) for p in params)
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    state_ptrs = ptrs(v for s in inner.state.values() for v in s.values() if torch.is_tensor(v))
    master_ptrs = ptrs(p for g in inner.param_groups for p in g["params"]) - param_ptrs
    named = _named_tensors(opt) if opt is not inner else {}
    grad_ptrs: set[int] = set()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if not torch.is_tensor(obj):
            continue
        if st := _storage(obj):
            storages[st[0]] = st[1]
        if obj.grad is not None and (gs := _storage(obj.grad)):
            grad_ptrs.add(gs[0])
            storages[gs[0]] = gs[1]
    for ptr, (_, nbytes) in named.items():  # in case gc does not track one of them
        storages.setdefault(ptr, nbytes)
    out = dict.fromkeys(("params", "grads", "optimizer_states", "fp32_master", "comm_buckets", "other"), 0)
    names: dict[str, int] = {}
    for ptr, nbytes in storages.items():
        if ptr in param_ptrs:
            role = "params"
        elif ptr in state_ptrs:
            role = "optimizer_states"
        elif ptr in master_ptrs:
            role = "fp32_master"
        elif ptr in grad_ptrs:
            role = "grads"
        else:
            role = _role(named[ptr][0]) if ptr in named else "other"
        out[role] += nbytes
        if ptr in named:
            names[named[ptr][0]] = names.get(named[ptr][0], 0) + nbytes
    out["model_states"] = out["params"] + out["grads"] + out["optimizer_states"] + out["fp32_master"]
    out["all_tensors"] = sum(storages.values())
    return {**out, "optimizer_attributes": names}


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    torch.set_num_threads(1)
    from pipeline.data.masking import MaskConfig, make_masks
    from pipeline.infra.engine import DeepSpeedConfig, OptimConfig, build_engine, compute_dtype, init_distributed
    from pipeline.models import create_model

    rank, world = init_distributed()
    gc.collect()
    rss0 = _rss()
    ds = DeepSpeedConfig(zero_stage=args.stage, precision=args.precision)
    arch = dict(num_frames=args.num_frames, img_size=args.img_size)
    engine, _ = build_engine(lambda: create_model(args.model, **arch), ds, OptimConfig(impl="torch"),
                             micro_batch=1, total_steps=10)
    spec = engine.module.spec
    gen = torch.Generator().manual_seed(rank)
    video = torch.randn(1, 3, spec.num_frames, spec.img_size, spec.img_size, generator=gen).to(compute_dtype(ds))
    enc, dec = make_masks(MaskConfig(), 1, spec.grid, gen)
    for _ in range(2):
        engine.backward(engine(video, enc, dec))
        engine.step()
    engine.backward(engine(video, enc, dec))  # the moment params, grads and optimizer states coexist
    del video
    gc.collect()
    held = held_bytes(engine)
    rss = _rss()
    engine.step()
    numel = sum(int(getattr(p, "ds_numel", p.numel())) for p in engine.module.parameters())
    result = {"rank": rank, "world": world, "stage": args.stage, "params_total": numel, "held_bytes": held,
              "rss_delta_bytes": rss - rss0, "optimizer": type(engine.optimizer).__name__}
    Path(args.result).write_text(json.dumps(result))
    torch.distributed.barrier()


def run_stage(args: argparse.Namespace, stage: int, work: Path) -> list[dict[str, Any]]:
    """Launch 2 ranks for one stage; their results."""
    from pipeline.core.net import free_port

    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(args.ranks), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs = []
    for r in range(args.ranks):
        cmd = [sys.executable, "-m", "benchmarks.bench_zero", "--worker", "--stage", str(stage), "--model", args.model,
               "--precision", args.precision, "--num-frames", str(args.num_frames), "--img-size", str(args.img_size),
               "--result", str(work / f"s{stage}r{r}.json")]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=args.timeout)
            logs.append(out)
    finally:
        for p in procs:  # only the ranks this launcher started
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise RuntimeError(f"stage {stage} failed: {[p.returncode for p in procs]}\n{logs[0][-3000:]}")
    return [json.loads((work / f"s{stage}r{r}.json").read_text()) for r in range(args.ranks)]


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    from jobs.plan import GIB, PlanConfig, PlanSection, make_plan
    from pipeline.models import ModelConfig

    plan = make_plan(PlanConfig(model=ModelConfig(name=args.model, num_frames=args.num_frames, img_size=args.img_size),
                                plan=PlanSection(world_size=args.ranks, precision=args.precision)))
    return {"params": plan["params"]["total"],
            "bytes": {int(k[-1]): v * GIB for k, v in plan["memory_gib_per_gpu"].items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_s")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--num-frames", type=int, default=8, help="input size does not change model states; small is fast")
    p.add_argument("--img-size", type=int, default=128, help="a multiple of 32: the running-cell mask tiles 2x2 patches")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--quick", action="store_true", help="vit_tiny at 4x64, stage 3 only (smoke test)")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.quick:
        args.model, args.num_frames, args.img_size, args.stages = "vit_tiny", 4, 64, "3"
    started, load_before = time.time(), load_avg()
    est = estimate(args)
    stages, figures = {}, []
    with tempfile.TemporaryDirectory(prefix="bench_zero_") as tmp:
        for stage in [int(s) for s in args.stages.split(",")]:
            t0 = time.time()
            ranks = run_stage(args, stage, Path(tmp))
            measured = max(r["held_bytes"]["model_states"] for r in ranks)
            rss = max(r["rss_delta_bytes"] for r in ranks)
            stages[stage] = {"ranks": ranks, "measured_bytes": measured, "rss_delta_bytes": rss,
                             "estimated_bytes": est["bytes"][stage], "seconds": round(time.time() - t0, 1)}
            held = ranks[0]["held_bytes"]
            parts = ", ".join(f"{k} {v / MB:.1f}" for k, v in held.items()
                              if k not in ("model_states", "all_tensors", "optimizer_attributes") and v)
            figures.append(figure(f"ZeRO-{stage} model states/rank ({args.model} {args.precision}, 2 ranks): "
                                  "measured / plan", measured / MB, est["bytes"][stage] / MB, "MB",
                                  "jobs.plan estimate (ZeRO paper bytes/param)",
                                  detail=f"rank 0 MB: {parts}; RSS growth {rss / MB:.0f} MB; "
                                         f"{ranks[0]['optimizer']}"))
            print(f"  ZeRO-{stage}: measured {measured / MB:.1f} MB/rank ({parts}), RSS +{rss / MB:.0f} MB, "
                  f"estimate {est['bytes'][stage] / MB:.1f} MB -> {measured / est['bytes'][stage]:.2f}", flush=True)
    body = {"model": args.model, "precision": args.precision, "ranks": args.ranks,
            "input": f"{args.num_frames}x{args.img_size}", "params_estimated": est["params"],
            "params_measured": stages[next(iter(stages))]["ranks"][0]["params_total"],
            "stages": {str(k): v for k, v in stages.items()}, "figures": figures}
    return write_result(Path(args.out), "zero_memory", command("benchmarks.bench_zero", argv), started, load_before, body)


if __name__ == "__main__":
    main()
