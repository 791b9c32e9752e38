"""Each rank resumes from only the checkpoint files :func:`files_for_rank` gives it.

Real DeepSpeed engines on 2 CPU ranks over gloo, for every ZeRO stage and bf16: both ranks save,
then each rank copies just its selection of the checkpoint into a folder of its own, loads it
into a fresh engine and takes one more step beside the engine that never stopped. Identical
parameters after that step mean the weights, the fp32 masters and the Adam moments all came from
the selected files, and that DeepSpeed never needed another rank's shard.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.infra.engine import DeepSpeedConfig, OptimConfig
from tests.integration.test_engine_dist import _batch, _model, _spawn, _train

OPTIM = OptimConfig(lr=1e-3, warmup_fraction=0.0, schedule="constant")


def _worker(rank: int, world: int, stage: int, precision: str, root: Path) -> None:
    import torch.distributed as dist

    from pipeline.infra.engine import build_engine, load_checkpoint, save_checkpoint
    from pipeline.train.checkpoint import files_for_rank

    ds = DeepSpeedConfig(zero_stage=stage, precision=precision)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    video, enc, dec = _batch(4, decoder_ratio=0.0)
    shard = (video[rank::world].to(dtype), enc[rank::world], dec[rank::world])
    engine, schedule = build_engine(_model, ds, OPTIM, micro_batch=2, total_steps=10)
    _train(engine, schedule, shard, 2)
    save_checkpoint(engine, root / "full", "step2", {"step": 2})
    dist.barrier()
    names = sorted(p.relative_to(root / "full").as_posix() for p in (root / "full").rglob("*") if p.is_file())
    mine = files_for_rank(names, rank, same_world=True, local_rank=rank)
    for name in mine:
        (root / f"rank{rank}" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "full" / name, root / f"rank{rank}" / name)
    restored, _ = build_engine(_model, ds, OPTIM, micro_batch=2, total_steps=10)
    state = load_checkpoint(restored, root / f"rank{rank}", "step2")
    _train(engine, schedule, shard, 1, start=2)
    _train(restored, schedule, shard, 1, start=2)
    with torch.no_grad():  # ZeRO-3 partitions: gather both models' parameters to compare
        from pipeline.infra.engine import gathered

        with gathered(engine.module), gathered(restored.module):
            diff = max((a.float() - b.float()).abs().max().item()
                       for a, b in zip(engine.module.parameters(), restored.module.parameters()))
    torch.save({"names": names, "mine": mine, "state": state, "diff": diff}, root / f"result{rank}.pt")


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (1, "fp32"), (2, "bf16"), (3, "fp32")])
def test_each_rank_resumes_exactly_from_its_own_files(stage: int, precision: str, tmp_path: Path) -> None:
    _spawn(_worker, 2, stage, precision, tmp_path)
    results = [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in (0, 1)]
    for rank, r in enumerate(results):
        assert r["state"] == {"step": 2}
        assert r["diff"] == 0.0, f"rank {rank}: resumed step differs by {r['diff']}"
        other = 1 - rank
        assert not [n for n in r["mine"] if f"zero_pp_rank_{other}_" in n or n == f"rng/rank{other}.pt"], r["mine"]
    shards = [n for n in results[0]["names"] if "zero_pp_rank_" in n]
    if stage > 0:  # there were per-rank shards to leave out, and each rank took its own
        assert any("_1_" in n for n in shards) and any("zero_pp_rank_0_" in n for n in results[0]["mine"])
        assert any("zero_pp_rank_1_" in n for n in results[1]["mine"])
    if precision == "bf16" and stage in (1, 2):
        assert any(n.rsplit("/", 1)[-1].startswith("bf16_zero_pp_rank_") for n in shards), shards
