"""Numerics of the training path, for real: non-finite losses on 2 Ray Train workers (DeepSpeed over
gloo, MLflow), and bf16 engines on 2 CPU ranks (gradient accumulation dtype, fp32 master exports).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jobs.pretrain import run
from pipeline.train.numerics import NonFiniteLossError
from tests.integration.test_pretrain import (
    _cfg,
    _history,
    shards,  # noqa: F401  (the module's shard fixture)
)

pytestmark = pytest.mark.usefixtures("mlflow_db")  # a copy of a migrated tracking DB in tmp_path (tests/conftest.py)

# ---- non-finite losses -------------------------------------------------------------------------


def test_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(shards: str, tmp_path: Path) -> None:  # noqa: F811
    """Rank 1 alone produces 2 inf losses; rank 0 (whose metrics MLflow gets) counts both skips, so
    the ranks agreed, and DeepSpeed counts exactly ``train.steps`` optimizer steps (no micro-step of
    a skipped batch reached it) though every step accumulates 2 micro-batches."""
    cfg = _cfg(shards, tmp_path, "skips", "train.steps=4", "train.checkpoint_every=4", "deepspeed.zero_stage=2",
               "deepspeed.gradient_accumulation_steps=2", "train.max_nonfinite=3",
               "train.fault_nonfinite_step=2", "train.fault_nonfinite_count=2", "train.export=false")
    assert run(cfg) == 0
    skipped = _history(tmp_path, "skips", "optim/nonfinite_skipped")
    assert skipped == {1: 0, 2: 2, 3: 2, 4: 2}
    losses = _history(tmp_path, "skips")
    assert sorted(losses) == [1, 2, 3, 4] and all(v == v and abs(v) < 1e3 for v in losses.values()), losses
    # one guard per micro-batch (2, or 4 at step 2) + one for the logged means
    assert _history(tmp_path, "skips", "host_syncs_per_step") == {1: 3, 2: 5, 3: 3, 4: 3}
    # the run folder also holds Ray Train's checkpoint_manager_snapshot.json: only folders are checkpoints
    (checkpoint,) = (p for p in (tmp_path / "runs" / "skips").glob("checkpoint_*") if p.is_dir())
    tag = json.loads((checkpoint / "loop.json").read_text())["tag"]
    states = torch.load(checkpoint / "ds" / tag / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["global_steps"] == 4 and states["skipped_steps"] == 0


def test_nonfinite_losses_in_a_row_stop_the_job_in_one_line(shards: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = _cfg(shards, tmp_path, "diverged", "train.steps=6", "train.checkpoint_every=2", "train.max_nonfinite=3",
               "train.fault_nonfinite_step=3", "train.fault_nonfinite_count=100", "scaling.max_failures=0",
               "train.export=false")
    with pytest.raises(NonFiniteLossError) as error:
        run(cfg)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    assert message.startswith("step 3: 3 non-finite losses in a row (train.max_nonfinite=3)"), message
    assert f"last good checkpoint: step 2 in {tmp_path / 'runs' / 'diverged'}" in message, message


# ---- bf16: fp32 gradient accumulation and fp32 master exports -----------------------------------

STAGES = (1, 2, 3)


def _bf16_worker(rank: int, world: int, out: Path) -> None:
    """Per ZeRO stage: a bf16 vit_tiny engine, 4 steps at lr 1e-3, a checkpoint, the fp32 masters."""
    from deepspeed.utils import safe_get_full_fp32_param

    from pipeline.infra.engine import DeepSpeedConfig, OptimConfig, build_engine
    from pipeline.train import checkpoint as ckpt
    from tests.integration.test_engine_dist import _batch, _model

    video, enc, dec = _batch(4)
    video, enc, dec = video[rank::world].bfloat16(), enc[rank::world], dec[rank::world]
    for stage in STAGES:
        ds = DeepSpeedConfig(zero_stage=stage, precision="bf16", gradient_accumulation_steps=2)
        engine, _ = build_engine(_model, ds, OptimConfig(lr=1e-3, warmup_fraction=0.0), micro_batch=2, total_steps=4)
        opt = engine.optimizer
        accum = getattr(opt, "grad_acc_dtype", None) or getattr(opt, "gradient_accumulation_dtype", None)
        losses = []
        for _ in range(8):  # 4 optimizer steps of 2 micro-batches
            loss = engine(video, enc, dec)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss))
        masters = {n: safe_get_full_fp32_param(p).detach().clone() for n, p in engine.module.named_parameters()}
        ckpt.save(engine, out / f"zero{stage}", 4, {"world_size": world}, rank)
        if rank == 0:
            torch.save({"optimizer": type(opt).__name__, "accum": accum, "losses": losses, "masters": masters,
                        "steps": engine.global_steps}, out / f"zero{stage}.pt")
        del engine, opt


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.integration.test_engine_dist import _spawn

    out = tmp_path_factory.mktemp("bf16")
    _spawn(_bf16_worker, 2, out)
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_bf16_gradients_accumulate_in_fp32_and_train(bf16_runs: Path, stage: int) -> None:
    run_ = torch.load(bf16_runs / f"zero{stage}.pt", weights_only=False)
    assert run_["accum"] == torch.float32, (stage, run_["optimizer"], run_["accum"])
    assert run_["steps"] == 4
    assert run_["losses"][-1] < run_["losses"][0], run_["losses"]


@pytest.mark.parametrize("stage", STAGES)
def test_fp32_export_is_the_fp32_master_weights(bf16_runs: Path, stage: int) -> None:
    from pipeline.train.export import consolidated_state

    masters = torch.load(bf16_runs / f"zero{stage}.pt", weights_only=False)["masters"]
    exported = consolidated_state(bf16_runs / f"zero{stage}")
    assert set(masters) <= set(exported)
    differ = [k for k in masters if not torch.equal(exported[k], masters[k].float())]
    assert not differ, f"ZeRO-{stage}: {len(differ)} exported tensors differ from the fp32 masters, e.g. {differ[:3]}"
    beyond_bf16 = [k for k, v in exported.items() if v.is_floating_point() and not torch.equal(v, v.bfloat16().float())]
    assert len(beyond_bf16) >= len(masters) // 2, f"ZeRO-{stage}: only {len(beyond_bf16)} tensors beyond bf16"
