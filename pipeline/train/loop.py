"""What the per-rank loops share (``pretrain``, ``finetune``; ``evaluate`` and ``extract`` in part).

Every loop is one function ``loop(cfg, session)`` that reads top to bottom: set up, then one
step per iteration, logging and checkpointing on a schedule. The pieces here are the ones they
would otherwise repeat: the check of ``data.shards``, the model factory (init weights loaded
before the engine copies its masters), the restore block (:func:`setup`), the metrics every
training loop logs, the checkpoint save block (:func:`save_checkpoint`), the tracker start with
the common tags, and the test-only fault injection. Plain functions; no framework, no callbacks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.core.config import config_hash
from pipeline.core.errors import DataError
from pipeline.data.loader import TrainLoader
from pipeline.infra import engine as eng
from pipeline.infra.tracking import Tracker, make_tracker
from pipeline.models import create_model_from_config
from pipeline.models.model_config import init_weights
from pipeline.models.weights import load_file
from pipeline.train import checkpoint as ckpt
from pipeline.train import comm
from pipeline.train.job_configs import DistillConfig, EvaluateConfig, ExtractConfig, FinetuneConfig, PretrainConfig
from pipeline.train.meter import Meter, StartupClock
from pipeline.train.numerics import NonFiniteFault, NonFiniteGuard
from pipeline.train.session import Session

log = logging.getLogger(__name__)

TrainJob = PretrainConfig | FinetuneConfig | DistillConfig  # the configs of the loops that train (and checkpoint)
LoopJob = TrainJob | EvaluateConfig | ExtractConfig  # the configs of every per-rank loop


@dataclass
class Setup:
    """What a training loop carries from one step to the next."""

    engine: Any
    schedule: eng.LrSchedule
    loader: TrainLoader
    meter: Meter
    dtype: torch.dtype
    step: int
    run_id: str
    guard: NonFiniteGuard
    fault: NonFiniteFault
    state: dict[str, Any] = field(default_factory=dict)  # loop state saved with each checkpoint (e.g. "best")
    startup: StartupClock = field(default_factory=StartupClock)  # the session's: logged with the first step
    rank: int = 0


def require_shards(cfg: LoopJob) -> None:
    """DataError unless ``data.shards`` names a shard set (or, pre-training, ``data.sources`` several)."""
    if not cfg.data.shards and not getattr(cfg.data, "sources", ()):
        raise DataError("data.shards is not set (a folder or s3:// prefix written by jobs.shard)")


def model_factory(cfg: TrainJob, task: str, prepare: Callable[[torch.nn.Module], None] | None = None
                  ) -> Callable[[], torch.nn.Module]:
    """``build()`` for :func:`~pipeline.infra.engine.build_engine`: the ``task`` model of ``cfg.model``
    with ``model.init``'s whole weights in (before the engine copies its fp32 masters), then ``prepare``."""
    init = init_weights(cfg.model.init)  # '' for none ('' or "random")
    model_cfg = dataclasses.replace(cfg.model, init="")

    def build() -> torch.nn.Module:
        model = create_model_from_config(model_cfg, task)
        if init:
            with eng.gathered(model):
                # this node's copy of a remote init; init_head (fine-tuning): "drop" as the driver decided
                load_file(model, sio.cached_copy(init), drop_head=getattr(cfg.model, "init_head", "keep") == "drop")
        if prepare is not None:
            prepare(model)
        return model

    return build


def setup(cfg: TrainJob, session: Session, build: Callable[[], torch.nn.Module], loader: TrainLoader, meter: Meter,
          rank: int, world: int, state: dict[str, Any] | None = None) -> Setup:
    """The engine and the position: fresh, or exactly where the run's last checkpoint left off
    (weights, optimizer, loader position, each rank's random stream, step, MLflow run and the
    loop's own ``state``, whose keys and fresh values the caller gives)."""
    state = dict(state or {})
    with session.restore_dir() as restore_dir:
        restore = ckpt.prepare_restore(restore_dir, rank, world, session.local_rank)
        engine, schedule = eng.build_engine(build, cfg.deepspeed, cfg.optim, cfg.data.batch_size,
                                            cfg.train.steps, world, load_universal=bool(restore and restore.universal),
                                            views_per_video=cfg.data.repeated_aug)
        torch.manual_seed(cfg.run.seed * 1000 + rank)  # from here on (drop path, mixup) each rank has its own stream
        step, run_id = 0, ""
        if restore is not None:
            eng.load_checkpoint(engine, restore.ds_dir, restore.tag)
            loader.load_state_dict(restore.loop["data"])
            ckpt.restore_rng(restore.rng_file)  # continues each rank's stream exactly
            step, run_id = int(restore.loop["step"]), restore.loop.get("run_id", "")
            state.update({k: restore.loop[k] for k in state if k in restore.loop})
            log.info("resumed at step %d (epoch %d, data step %d)", step, loader.epoch, loader.step)
    comm.check_placement(engine.module, engine.device, offloaded=cfg.deepspeed.offload_param != "none")
    session.startup.mark("engine")
    return Setup(engine, schedule, loader, meter, eng.compute_dtype(cfg.deepspeed), step, run_id,
                 guard(cfg, step if restore is not None else -1), fault(cfg, rank, world), state,
                 session.startup, rank)


def next_batch(s: Setup, batches: Any) -> Any:
    """The next micro-batch; the time spent waiting for it goes to the meter."""
    t0 = time.monotonic()
    batch = next(batches)
    s.meter.data_wait(time.monotonic() - t0)
    return batch


def backward_step(s: Setup, loss: torch.Tensor) -> torch.Tensor | None:
    """Backward and engine step for the micro-batch loss of step ``s.step + 1``; its detached fp32
    value, or None when it is not finite on some rank: then every rank skips it (no backward, no
    ``engine.step()``) and ``s.guard`` counts and limits these."""
    loss = s.fault(loss, s.step + 1)
    if s.guard.skip(loss, s.step + 1):
        return None
    s.engine.backward(loss)
    s.engine.step()
    return loss.detach().float()


def guard(cfg: TrainJob, last_checkpoint: int) -> NonFiniteGuard:
    return NonFiniteGuard(cfg.train.max_nonfinite, f"{cfg.run.output.rstrip('/')}/{cfg.run.name}", last_checkpoint)


def fault(cfg: TrainJob, rank: int, world: int) -> NonFiniteFault:
    return NonFiniteFault(cfg.train.fault_nonfinite_step, cfg.train.fault_nonfinite_count, rank == world - 1)


def start_tracker(cfg: LoopJob, stage: str, rank: int, world: int, device: Any, resume_run_id: str = "",
                  startup: StartupClock | None = None, **tags: Any) -> Tracker:
    """The rank's tracker (a no-op except on rank 0), started with the tags every loop sets; marks
    the end of ``startup``'s ``tracking`` phase."""
    tracker = make_tracker(cfg.tracking, rank)
    tracker.start(run_name=cfg.run.name, config=cfg, resume_run_id=resume_run_id,
                  tags={"stage": stage, **tags, "world_size": world, "config_hash": config_hash(cfg),
                        "dist_backend": comm.backend(), "device": str(device)})
    if startup is not None:
        startup.mark("tracking")
    return tracker


def due(step: int, every: int, last: int) -> bool:
    """Whether something done every ``every`` steps (0 = only at the end) is due at ``step``."""
    return step == last or (every > 0 and step % every == 0)


def data_metrics(loader: TrainLoader) -> dict[str, int]:
    """The rank's data health counters; with ``data.sources``, also ``data/source/<name>_samples``
    (ok samples per source, names from :attr:`TrainLoader.source_names`), every source from the start."""
    stats = loader.stats
    metrics = {"data_samples_ok": stats.samples_ok, "data_decode_errors": stats.decode_errors,
               "data_shard_errors": stats.shard_errors, "data_samples_lost": stats.samples_lost}
    for name in getattr(loader, "source_names", ()):
        metrics[f"data/source/{name}_samples"] = stats.by_source.get(name, 0)
    return metrics


def step_metrics(s: Setup, means: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a training loop logs at ``s.step``: ``means`` averaged over ranks, lr, grad norm,
    skipped losses, throughput and data health; the first time, also where the start-up went
    (``startup/*_s``: rank 0's clock, printed in one line by rank 0)."""
    metrics = {**comm.mean_floats(means), "lr": s.schedule(s.step - 1), "grad_norm": eng.grad_norm(s.engine),
               "nonfinite_skipped": s.guard.skipped, **s.meter.window(s.step, comm.host_syncs()),
               **data_metrics(s.loader)}
    if "first_step" not in s.startup.marks:
        s.startup.mark("first_step", s.meter.first_step_at)
        metrics.update(s.startup.metrics())
        if s.rank == 0:
            log.info("%s", s.startup.summary())
    return metrics


def save_checkpoint(s: Setup, session: Session, report: dict[str, Any], lr: float, rank: int, world: int) -> None:
    """Every rank writes its part of the checkpoint at ``s.step`` (with the loader position and
    ``s.state``) and reports it with ``report``; the guard then counts from this step."""
    staging = session.staging_dir(s.step)
    loop = {"data": s.loader.state_dict(), "world_size": world, "run_id": s.run_id, "lr": lr, **s.state}
    ckpt.save(s.engine, staging, s.step, loop, rank)
    session.report({**report, "step": s.step}, staging)
    s.guard.last_checkpoint = s.step


def maybe_fail(cfg: TrainJob, step: int, rank: int) -> None:
    """Fault injection for tests: kill rank 0's process once, right after ``train.fail_at_step``."""
    if rank != 0 or step != cfg.train.fail_at_step:
        return
    # Once per run: the marker lives with the run (a local output; tests only).
    marker = Path(cfg.run.output) / cfg.run.name / ".fault_injected"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(step))
        log.warning("fault injection: killing rank 0 after step %d", step)
        os._exit(1)
