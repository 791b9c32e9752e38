"""Which checkpoint files a resuming rank downloads (:func:`files_for_rank`), on the names DeepSpeed
0.19.8 and :mod:`pipeline.train.checkpoint` write for 2 ranks (ZeRO-2 fp32, ZeRO-2 bf16, ZeRO-3)."""

from __future__ import annotations

from pipeline.train.checkpoint import files_for_rank

TAG = "ds/step00000004"
SHARED = ["loop.json", "ds/latest", "ds/zero_to_fp32.py", f"{TAG}/mp_rank_00_model_states.pt"]


def _names(prefix: str, zero3: bool = False) -> list[str]:
    per_rank = [f"{TAG}/{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    if zero3:
        per_rank += [f"{TAG}/zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)]
    ours = [f"rng/rank{r}.pt" for r in (0, 1)] + [f"files/rank{r}.json" for r in (0, 1)]
    return sorted([*SHARED[:3], *([] if zero3 else SHARED[3:]), *per_rank, *ours])


def test_same_world_size_each_rank_takes_the_shared_files_and_its_own() -> None:
    for prefix, zero3 in (("", False), ("bf16_", False), ("", True)):
        names = _names(prefix, zero3)
        for rank in (0, 1):
            mine = files_for_rank(names, rank, same_world=True, local_rank=rank)
            own = [n for n in names if f"rank_{rank}_" in n or n.endswith((f"rank{rank}.pt", f"rank{rank}.json"))]
            shared = [n for n in names if "rank" not in n.rsplit("/", 1)[-1] or n.endswith("mp_rank_00_model_states.pt")
                      and "zero_pp" not in n]
            assert sorted(mine) == sorted(own + shared), (prefix, zero3, rank, mine)


def test_new_world_size_local_rank_zero_takes_everything_for_the_conversion() -> None:
    names = _names("")
    assert files_for_rank(names, 2, same_world=False, local_rank=0) == names
    assert files_for_rank(names, 3, same_world=False, local_rank=1) == ["loop.json"]
