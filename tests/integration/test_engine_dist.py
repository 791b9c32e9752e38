"""Real DeepSpeed engines on 1 and 2 CPU ranks over gloo (spawned processes, 127.0.0.1).

Each test spawns fresh processes: a process group and DeepSpeed's accelerator are per process,
and pytest's own process stays free of both. Results come back as files in ``tmp_path``.
"""

from __future__ import annotations

import faulthandler
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.core.net import free_port
from pipeline.infra.engine import DeepSpeedConfig, OptimConfig

TINY = dict(num_frames=4, img_size=32)
GRID = (2, 2, 2)


def _model():
    from pipeline.models import create_model

    torch.manual_seed(0)  # every rank (and every test) starts from the same weights
    return create_model("vit_tiny", "pretrain", **TINY)


def _batch(size: int, decoder_ratio: float = 0.5):
    """A fixed batch: video [size, 3, 4, 32, 32] and both masks. V1 masks (ratio 0) give every
    sample the same loss-token count, so a 2-rank mean of means equals the 1-rank mean."""
    from pipeline.data.masking import MaskConfig, make_masks

    gen = torch.Generator().manual_seed(1)
    video = torch.randn(size, 3, TINY["num_frames"], TINY["img_size"], TINY["img_size"], generator=gen)
    enc, dec = make_masks(MaskConfig(decoder_ratio=decoder_ratio), size, GRID, gen)
    return video, enc, dec


def _train(engine, schedule, batch, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        schedule.apply(engine, step)
        video, enc, dec = batch
        loss = engine(video.to(engine.device), enc, dec)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` spawned ranks. A rank killed by a signal (a C++
    abort in gloo or DeepSpeed) leaves no Python exception: the failure then carries each rank's
    last stderr lines and Python stacks (faulthandler), which the ranks write to files."""
    with tempfile.TemporaryDirectory(prefix="ranks-") as logs:
        try:
            mp.start_processes(_entry, args=(world, free_port(), fn, args, logs), nprocs=world, start_method="spawn")
        except mp.ProcessExitedException as exc:
            tails = {p.name: p.read_text(errors="replace").splitlines()[-25:] for p in sorted(Path(logs).iterdir())}
            raise AssertionError(f"{exc}; the ranks' stderr ends:\n" + "\n".join(
                f"--- {name}\n" + "\n".join(lines) for name, lines in tails.items())) from None


def _entry(rank: int, world: int, port: int, fn, args, logs: str) -> None:
    err = open(os.path.join(logs, f"rank{rank}.stderr"), "w")  # noqa: SIM115 - open for the process's life
    os.dup2(err.fileno(), 2)  # C++ aborts write to fd 2: keep them
    faulthandler.enable(file=err)  # Python stacks of every thread on SIGABRT / SIGSEGV
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # 2 ranks on 2 shared cores
    fn(rank, world, *args)


# ---- ZeRO 1/2/3 on 2 ranks -------------------------------------------------------------------


def _stage_worker(rank, world, stage, out: Path):
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    from pipeline.infra.engine import build_engine

    if stage == 1:  # as Ray Train does: the group exists before the engine is built
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    optim = OptimConfig(lr=2e-3, betas=(0.85, 0.97), eps=1e-7, weight_decay=0.1, layer_decay=0.5,
                        warmup_fraction=0.0)
    ds = DeepSpeedConfig(zero_stage=stage, precision="fp32", overlap_comm=stage == 3)
    engine, schedule = build_engine(_model, ds, optim, micro_batch=2, total_steps=50)
    params = list(engine.module.parameters())
    partitioned = [p.ds_tensor.numel() < p.ds_numel for p in params if hasattr(p, "ds_numel")]
    status = {p.ds_status for p in params if hasattr(p, "ds_status")}
    video, enc, dec = _batch(4)
    losses = _train(engine, schedule, (video[rank::world], enc[rank::world], dec[rank::world]), 6)
    schedule.apply(engine, 10)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    torch.save({"losses": losses, "groups": groups, "type": type(engine.optimizer).__name__,
                "partitioned": partitioned, "not_available": status == {ZeroParamStatus.NOT_AVAILABLE},
                "lr10": schedule(10)}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_trains_on_two_ranks(stage, tmp_path):
    _spawn(_stage_worker, 2, stage, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["losses"][-1] < 0.9 * r0["losses"][0], r0["losses"]
    assert r1["losses"][-1] < 0.9 * r1["losses"][0], r1["losses"]
    assert "Zero" in r0["type"]
    # Every optimizer field arrived: read back from the engine's own optimizer groups.
    groups = r0["groups"]
    assert {g["betas"] for g in groups} == {(0.85, 0.97)} and {g["eps"] for g in groups} == {1e-7}
    assert {g["weight_decay"] for g in groups} == {0.0, 0.1}  # decay and no-decay groups survive ZeRO
    assert {g["lr_scale"] for g in groups} == {0.125, 0.25, 0.5, 1.0}  # 2 blocks: 4 layer ids
    for g in groups:
        assert g["lr"] == pytest.approx(r0["lr10"] * g["lr_scale"])
    if stage == 3:  # built inside zero.Init: no rank ever held a whole parameter
        assert r0["not_available"] and r1["not_available"]
        assert any(r0["partitioned"]) and any(r1["partitioned"])


def _precision_worker(rank, world, out: Path):
    from pipeline.infra.engine import build_engine, grad_norm, load_checkpoint, save_checkpoint

    ds = DeepSpeedConfig(zero_stage=2, precision="bf16", grad_clip=1.0, gradient_accumulation_steps=2)
    engine, schedule = build_engine(_model(), ds, OptimConfig(lr=2e-3, warmup_fraction=0.0), micro_batch=2,
                                    total_steps=10)
    video, enc, dec = _batch(2)
    losses = []
    for micro in range(8):  # 4 optimizer steps of 2 micro-batches
        schedule.apply(engine, micro // 2)
        loss = engine(video.to(engine.device, torch.bfloat16), enc, dec)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    saved = {k: v.clone() for k, v in engine.module.state_dict().items()}
    save_checkpoint(engine, out / "ckpt", "step4", {"step": 4})
    _train(engine, schedule, (video.bfloat16(), enc, dec), 2, start=4)  # move away, then come back
    state = load_checkpoint(engine, out / "ckpt", "step4")
    same = all(torch.equal(saved[k], v) for k, v in engine.module.state_dict().items())
    torch.save({"losses": losses, "dtype": str(next(engine.module.parameters()).dtype), "state": state,
                "same": same, "norm": grad_norm(engine), "steps": engine.global_steps}, out / "rank0.pt")


def test_bf16_with_accumulation_clipping_and_same_size_resume(tmp_path):
    _spawn(_precision_worker, 1, tmp_path)
    r = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert r["dtype"] == "torch.bfloat16" and r["steps"] == 4  # 8 micro-batches; restored by the load
    assert r["same"] and r["state"] == {"step": 4}
    assert r["norm"] is not None and r["norm"] > 0
    assert r["losses"][-1] < r["losses"][0]


# ---- checkpoints: N ranks -> universal -> M ranks --------------------------------------------

OPTIM = OptimConfig(lr=1e-3, warmup_fraction=0.0, schedule="constant")


def _save_worker(rank, world, ckpt: Path):
    from pipeline.infra.engine import build_engine, save_checkpoint

    engine, schedule = build_engine(_model, DeepSpeedConfig(zero_stage=2, precision="fp32"), OPTIM,
                                    micro_batch=2, total_steps=10)
    video, enc, dec = _batch(4, decoder_ratio=0.0)
    shard = (video[rank::world], enc[rank::world], dec[rank::world])
    _train(engine, schedule, shard, 2)
    save_checkpoint(engine, ckpt, "step2", {"step": 2, "data": {"epoch": 0, "position": 8}})
    _train(engine, schedule, shard, 1, start=2)
    save_checkpoint(engine, ckpt, "step3", {"step": 3})


def _resume_worker(rank, world, universal: Path, out: Path):
    from pipeline.infra.engine import build_engine, load_checkpoint

    engine, schedule = build_engine(_model, DeepSpeedConfig(zero_stage=2, precision="fp32"), OPTIM,
                                    micro_batch=4, total_steps=10, load_universal=True)
    state = load_checkpoint(engine, universal, "step2")
    loaded = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    _train(engine, schedule, _batch(4, decoder_ratio=0.0), 1, start=state["step"])
    after = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    torch.save({"state": state, "loaded": loaded, "after": after}, out / "resumed.pt")


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    from pipeline.infra.engine import consolidate_fp32, to_universal

    ckpt, universal = tmp_path / "ckpt", tmp_path / "universal"
    _spawn(_save_worker, 2, ckpt)
    step2, step3 = consolidate_fp32(ckpt, "step2"), consolidate_fp32(ckpt, "step3")
    assert to_universal(ckpt, "step2", universal) == universal / "step2"
    _spawn(_resume_worker, 1, universal, tmp_path)
    r = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert r["state"] == {"step": 2, "data": {"epoch": 0, "position": 8}}  # exactly what was saved
    params = set(step2)
    assert params and params <= set(r["loaded"])
    for name in params:
        torch.testing.assert_close(r["loaded"][name], step2[name], rtol=0, atol=0, msg=name)
    # The next step on 1 rank (both ranks' clips in one batch) matches the 2-rank run's step 3,
    # which needs the Adam moments to have come through the conversion too.
    moved = max((step3[n] - step2[n]).abs().max().item() for n in params)
    worst = max((r["after"][n] - step3[n]).abs().max().item() for n in params)
    assert worst < 1e-3 * moved, (worst, moved)


def test_unknown_checkpoint_is_a_one_line_error(tmp_path):
    from pipeline.core.errors import TubeletError
    from pipeline.infra.engine import to_universal

    with pytest.raises(TubeletError, match="no checkpoint 'nope'"):
        to_universal(tmp_path, "nope", tmp_path / "out")
