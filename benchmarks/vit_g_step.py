"""ViT-g (1.01B encoder + decoder) pre-training steps under DeepSpeed ZeRO-3 on this CPU machine.

Builds the full VideoMAE V2 ViT-g pre-training model inside ``deepspeed.zero.Init`` (bf16 params,
partitioned as each module is built, never whole on one rank), runs real optimizer steps on
16x224 clips with dual masking, and prints step time, peak RSS per rank and where parameters,
gradients and optimizer states live. The ranks are separate processes over gloo (this script
launches them itself, RANK / WORLD_SIZE / MASTER_ADDR=127.0.0.1), so an OOM-killed rank is
recorded as a result instead of taking the benchmark down.

    python -m benchmarks.vit_g_step                              # config below, 2 ranks, 3 steps
    python -m benchmarks.vit_g_step --ranks 1 --label nvme-1rank
    python -m benchmarks.vit_g_step --set deepspeed.offload_optimizer=none --set optim.impl=torch \
        --label plain-zero3-2ranks                               # everything in RAM
    python -m benchmarks.vit_g_step --tiny                       # vit_tiny, 1 step, seconds (tests)

Results: ``benchmarks/results/vit_g_step.json`` (one entry per ``--label``, replaced on rerun;
``--tiny`` writes nowhere unless ``--out`` is given). Offload files go under ``--nvme-dir`` in a
fresh sub-directory that is deleted afterwards.

DeepSpeed keys that ``pipeline.infra.engine.DeepSpeedConfig`` does not have yet (``sub_group_size``,
the param-offload buffer size) are added to the engine JSON here (``EXTRA_ZERO``); without a
small ``sub_group_size`` ZeRO-Infinity swaps the whole optimizer partition in at once and
allocates ``buffer_count`` buffers of that size (the 18.8 GB of the 1-rank baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "jobs" / "configs" / "pretrain" / "vit_g_offload.toml"
RESULTS = ROOT / "benchmarks" / "results" / "vit_g_step.json"
GB = 1e9

# zero_optimization keys the library's DeepSpeedConfig does not expose (see the module docstring).
SUB_GROUP_SIZE = 50_000_000
TINY_OVERRIDES = ["model.name=vit_tiny", "model.num_frames=8", "model.img_size=64",
                  "deepspeed.offload_optimizer=none", "deepspeed.offload_param=none",
                  "optim.impl=torch", "deepspeed.precision=fp32"]


def extra_zero(ds: Any, sub_group_size: int) -> dict[str, Any]:
    """Keys merged into ``zero_optimization`` on top of ``pipeline.infra.engine.deepspeed_config``."""
    zero: dict[str, Any] = {"sub_group_size": sub_group_size}
    if ds.offload_param == "nvme":
        # Param swap buffers must hold the largest optimizer sub-group (fp32 init from swapped
        # bf16 params) and the largest single parameter; 5 of them, not 5 x 1e8 elements.
        zero["offload_param"] = {"buffer_size": sub_group_size + 2**20, "max_in_cpu": 0}
    return zero


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


# ------------------------------------------------------------------------------------------------
# One rank


def _rss() -> float:
    import psutil

    return psutil.Process().memory_info().rss / GB


def _peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # KiB on Linux


def _du(path: str) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total / GB


def placement(engine: Any, model: Any, cfg: Any, world: int) -> dict[str, Any]:
    """Where parameters, gradients and optimizer states of this rank live, with sizes."""
    import torch

    ds = cfg.deepspeed
    params = list(model.parameters())
    total = sum(int(getattr(p, "ds_numel", p.numel())) for p in params)
    local = sum(int(p.ds_tensor.ds_numel) if hasattr(p, "ds_tensor") else p.numel() for p in params)
    dtype = str(params[0].dtype).replace("torch.", "")
    itemsize = torch.empty((), dtype=params[0].dtype).element_size()
    opt = engine.optimizer
    fp32_master = sum(t.numel() for t in getattr(opt, "fp32_partitioned_groups_flat", []) if t is not None)
    where_param = {"none": "RAM", "cpu": "RAM (offload_param=cpu; the device is the CPU)",
                   "nvme": f"NVMe files under {ds.nvme_path}"}[ds.offload_param]
    where_opt = {"none": "RAM (the device is the CPU)", "cpu": "RAM (offload_optimizer=cpu)",
                 "nvme": f"NVMe files under {ds.nvme_path}, swapped in sub-group by sub-group"}[ds.offload_optimizer]
    inner = type(getattr(opt, "optimizer", opt)).__name__
    out = {
        "params_total": total, "params_this_rank": local, "param_dtype": dtype,
        "params": f"{dtype}, 1/{world} per rank ({local * itemsize / GB:.2f} GB), {where_param}"
                  if ds.zero_stage == 3 else f"{dtype}, whole on every rank, RAM",
        "grads": (f"partitioned 1/{world} per rank, fp32 for the optimizer "
                  f"({'swapped with the optimizer state' if ds.offload_optimizer == 'nvme' else 'RAM'})"),
        "optimizer": f"{inner}: fp32 master + Adam m, v, 1/{world} per rank "
                     f"({local * 12 / GB:.2f} GB), {where_opt}",
        "fp32_master_elements_resident": int(fp32_master),
    }
    if ds.offload_optimizer == "nvme" or ds.offload_param == "nvme":
        out["nvme_files_gb_all_ranks"] = round(_du(ds.nvme_path), 2)
    return out


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    torch.set_num_threads(args.threads)
    from pipeline.core.config import load_config
    from pipeline.data.masking import make_masks
    from pipeline.infra.engine import (
        _deepspeed,
        build_model,
        compute_dtype,
        deepspeed_config,
        init_distributed,
        peak_lr,
        set_lr,
        videos_per_step,
    )
    from pipeline.models.factory import create_model_from_config
    from pipeline.models.hooks import param_groups
    from pipeline.train.job_configs import PretrainConfig

    progress = Path(args.progress)

    def phase(name: str, **kw: Any) -> None:
        rec = {"phase": name, "t": round(time.time() - t0, 2), "rss_gb": round(_rss(), 3),
               "peak_rss_gb": round(_peak_rss(), 3), **kw}
        with progress.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if rank == 0 or name.startswith("step") or name == "done":
            print(f"[rank {rank}] {name:14s} t={rec['t']:7.1f}s rss={rec['rss_gb']:.2f} GB "
                  f"peak={rec['peak_rss_gb']:.2f} GB {kw if kw else ''}", flush=True)

    t0 = time.time()
    rank = int(os.environ.get("RANK", 0))
    cfg = load_config(PretrainConfig, args.config, args.set)
    ds, optim = cfg.deepspeed, cfg.optim
    deepspeed = _deepspeed()
    rank, world = init_distributed()
    phase("init")
    micro = cfg.data.batch_size
    lr = peak_lr(optim, videos_per_step(micro, world, ds.gradient_accumulation_steps, cfg.data.repeated_aug))
    config = deepspeed_config(ds, optim, micro, world, lr=lr)
    _merge(config["zero_optimization"], extra_zero(ds, args.sub_group_size))
    with open(progress.with_suffix(".dsconfig.json"), "w") as f:
        json.dump(config, f, indent=1)
    model = build_model(lambda: create_model_from_config(cfg.model, "pretrain"), ds, config)
    phase("model_built")
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=param_groups(model, optim.weight_decay, optim.layer_decay,
                                                                    with_names=False))
    set_lr(engine, lr)
    phase("engine_built")
    where = placement(engine, model, cfg, world)
    spec = model.spec
    gen = torch.Generator().manual_seed(1000 + rank)
    dtype = compute_dtype(ds)
    video = torch.randn(micro, 3, spec.num_frames, spec.img_size, spec.img_size, generator=gen).to(dtype)
    steps = []
    for i in range(args.steps):
        enc, dec = make_masks(cfg.mask, micro, spec.grid, gen)
        ts = time.perf_counter()
        loss = engine(video, enc, dec)
        loss_value = loss.detach().float().item()
        tf = time.perf_counter()
        engine.backward(loss)
        tb = time.perf_counter()
        engine.step()
        te = time.perf_counter()
        rec = {"step": i, "loss": round(loss_value, 5), "step_s": round(te - ts, 2), "fwd_s": round(tf - ts, 2),
               "bwd_s": round(tb - tf, 2), "opt_s": round(te - tb, 2),
               "visible_tokens": int((~enc).sum()) // micro, "decoder_tokens": int((~dec).sum()) // micro}
        steps.append(rec)
        phase(f"step{i}", **rec)
    result = {"rank": rank, "world": world, "steps": steps, "placement": where,
              "peak_rss_gb": round(_peak_rss(), 3), "final_rss_gb": round(_rss(), 3),
              "optimizer": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
              "zero_optimizer": type(engine.optimizer).__name__, "grid": list(spec.grid),
              "input": f"{spec.num_frames}x{spec.img_size}", "micro_batch": micro}
    Path(args.result).write_text(json.dumps(result, indent=1))
    phase("done")
    torch.distributed.barrier()


# ------------------------------------------------------------------------------------------------
# The launcher


def _proc_rss(proc: Any) -> float:
    """RSS of the rank itself; not its children (a fork for a JIT ninja check briefly shows the
    parent's pages again)."""
    import psutil

    try:
        return proc.memory_info().rss / GB
    except psutil.Error:
        return 0.0


def launch(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    import psutil

    from pipeline.core.config import load_config
    from pipeline.core.net import free_port
    from pipeline.train.job_configs import PretrainConfig

    work = Path(tempfile.mkdtemp(prefix="vit_g_step_"))
    nvme_root = Path(args.nvme_dir) / f"tubelet-nvme-{os.getpid()}"
    overrides = [*overrides, f"deepspeed.nvme_path={nvme_root}"]
    cfg = load_config(PretrainConfig, args.config, overrides)  # fail here, not in every rank
    ds = cfg.deepspeed
    if "nvme" in (ds.offload_optimizer, ds.offload_param):
        nvme_root.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(args.ranks), OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    procs = []
    for r in range(args.ranks):
        cmd = [sys.executable, "-m", "benchmarks.vit_g_step", "--worker", "--config", str(args.config),
               "--steps", str(args.steps), "--threads", str(threads), "--sub-group-size", str(args.sub_group_size),
               "--progress", str(work / f"rank{r}.jsonl"), "--result", str(work / f"rank{r}.json")]
        for o in overrides:
            cmd += ["--set", o]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                                      start_new_session=True))
    handles = [psutil.Process(p.pid) for p in procs]
    sampled = [0.0] * args.ranks
    sys_used_peak = 0.0
    start = time.time()
    status = "ok"
    try:
        while any(p.poll() is None for p in procs):
            for i, h in enumerate(handles):
                sampled[i] = max(sampled[i], _proc_rss(h))
            vm = psutil.virtual_memory()
            sys_used_peak = max(sys_used_peak, (vm.total - vm.available) / GB)
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                status = "failed"
                time.sleep(3)  # let the others notice or be collected
                break
            if time.time() - start > args.timeout:
                status = "timeout"
                break
            time.sleep(0.25)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)  # only the groups this launcher started
                p.wait()
        wall = time.time() - start
        nvme_gb = _du(str(nvme_root)) if nvme_root.exists() else 0.0
        shutil.rmtree(nvme_root, ignore_errors=True)

    codes = [p.returncode for p in procs]
    if status == "ok" and any(c != 0 for c in codes):
        status = "failed"
    if status == "failed" and any(c == -signal.SIGKILL for c in codes):
        status = "oom-killed"  # SIGKILL not sent by us (we only kill after a failure): the OOM killer
    ranks = []
    for r in range(args.ranks):
        res_file, prog_file = work / f"rank{r}.json", work / f"rank{r}.jsonl"
        res = json.loads(res_file.read_text()) if res_file.exists() else {}
        prog = [json.loads(line) for line in prog_file.read_text().splitlines()] if prog_file.exists() else []
        ranks.append({"rank": r, "exit_code": codes[r], "reached": prog[-1]["phase"] if prog else "start",
                      # a rank that died never wrote its result: its peak is the launcher's sample
                      "peak_rss_gb": res.get("peak_rss_gb", round(max([x["peak_rss_gb"] for x in prog] + [sampled[r]]), 3)),
                      "sampled_peak_rss_gb": round(sampled[r], 3), "phases": prog, **{k: v for k, v in res.items()
                                                                                     if k not in ("rank", "peak_rss_gb")}})
    ds_json = work / "rank0.dsconfig.json"
    entry = {
        "label": args.label, "status": status, "ranks": args.ranks, "threads_per_rank": threads,
        "model": cfg.model.name, "input": f"{cfg.model.num_frames}x{cfg.model.img_size}",
        "micro_batch": cfg.data.batch_size, "mask": {"encoder_ratio": cfg.mask.encoder_ratio,
                                                     "decoder_ratio": cfg.mask.decoder_ratio},
        "zero_stage": ds.zero_stage, "precision": ds.precision, "offload_optimizer": ds.offload_optimizer,
        "offload_param": ds.offload_param, "optim_impl": cfg.optim.impl, "sub_group_size": args.sub_group_size,
        "overrides": overrides[:-1], "wall_s": round(wall, 1), "nvme_files_gb_at_end": round(nvme_gb, 2),
        "system_used_peak_gb": round(sys_used_peak, 2),
        "deepspeed_config": json.loads(ds_json.read_text()) if ds_json.exists() else None,
        "per_rank": ranks,
    }
    steps = [s["step_s"] for rk in ranks for s in rk.get("steps", [])[1:]]  # step 0 is warm-up
    first = [rk["steps"][0]["step_s"] for rk in ranks if rk.get("steps")]
    entry["first_step_s"] = max(first) if first else None
    entry["step_s"] = round(statistics.median(steps), 2) if steps else None
    peaks = [rk["peak_rss_gb"] for rk in ranks]
    entry["peak_rss_gb_per_rank"] = peaks
    if ranks and ranks[0].get("placement"):
        entry["placement"] = {k: ranks[0]["placement"][k] for k in ("params", "grads", "optimizer", "param_dtype")}
    shutil.rmtree(work, ignore_errors=True)
    return entry


def _summary(e: dict[str, Any]) -> str:
    lines = [f"{e['label']}: {e['status']}  ranks={e['ranks']} ZeRO-{e['zero_stage']} {e['precision']} "
             f"offload_optimizer={e['offload_optimizer']} offload_param={e['offload_param']} "
             f"({e['model']} {e['input']}, batch {e['micro_batch']}/rank)"]
    lines.append(f"  step time {e['step_s']} s (first step {e['first_step_s']} s), wall {e['wall_s']} s")
    for rk in e["per_rank"]:
        lines.append(f"  rank {rk['rank']}: peak RSS {rk['peak_rss_gb']} GB (sampled {rk['sampled_peak_rss_gb']}), "
                     f"reached {rk['reached']}, exit {rk['exit_code']}")
    for k, v in (e.get("placement") or {}).items():
        lines.append(f"  {k:10s} {v}")
    lines.append(f"  machine memory in use at peak: {e['system_used_peak_gb']} GB")
    return "\n".join(lines)


def save(entry: dict[str, Any], path: Path) -> None:
    import torch

    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("machine", {"cpus": os.cpu_count(), "platform": platform.machine(), "torch": torch.__version__})
    try:
        import deepspeed  # noqa: F401  (version only; DS_ACCELERATOR is set)

        data["machine"]["deepspeed"] = deepspeed.__version__
    except Exception:
        pass
    import psutil

    data["machine"]["memory_gb"] = round(psutil.virtual_memory().total / GB, 1)
    runs = [r for r in data.get("runs", []) if r.get("label") != entry["label"]]
    runs.append(entry)
    data["runs"] = runs
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="pre-training TOML ([model] [mask] [data] [optim] [deepspeed])")
    p.add_argument("--set", action="append", default=[], help="config override, e.g. deepspeed.offload_param=nvme")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps; the first is warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch threads per rank (0 = cores / ranks)")
    p.add_argument("--sub-group-size", type=int, default=SUB_GROUP_SIZE, help="ZeRO-3 optimizer sub-group (elements)")
    p.add_argument("--nvme-dir", default=tempfile.gettempdir(), help="where offload files go (deleted afterwards)")
    p.add_argument("--timeout", type=float, default=1500, help="seconds before the ranks are stopped")
    p.add_argument("--label", default="", help="entry name in the results file")
    p.add_argument("--out", default=None, help=f"results JSON (default {RESULTS.relative_to(ROOT)}; --tiny: none)")
    p.add_argument("--tiny", action="store_true", help="vit_tiny, 8x64, fp32, no offload, 1 step: seconds")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    overrides = list(args.set)
    if args.tiny:
        overrides = TINY_OVERRIDES + overrides
        if "--steps" not in (argv if argv is not None else sys.argv):
            args.steps = 1
    if not args.label:
        args.label = "tiny" if args.tiny else f"{args.ranks}rank"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    entry = launch(args, overrides)
    print(_summary(entry), flush=True)
    out = Path(args.out) if args.out else (None if args.tiny else RESULTS)
    if out is not None:
        save(entry, out)
        print(f"recorded in {out}")
    return 0 if entry["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
