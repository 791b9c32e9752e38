"""bf16 settings reach DeepSpeed as meant, and the non-finite loss guard counts and stops."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import ConfigError, load_config
from pipeline.infra.engine import DeepSpeedConfig, OptimConfig, deepspeed_config
from pipeline.train.job_configs import PretrainConfig
from pipeline.train.numerics import NonFiniteFault, NonFiniteGuard, NonFiniteLossError


def _data_types(**kwargs) -> dict | None:
    return deepspeed_config(DeepSpeedConfig(**kwargs), OptimConfig(), micro_batch=2, world_size=2,
                            device="cpu").get("data_types")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_accumulates_gradients_in_fp32_by_default(stage: int) -> None:
    assert _data_types(zero_stage=stage, precision="bf16") == {"grad_accum_dtype": "fp32"}
    assert _data_types(zero_stage=stage, precision="bf16", grad_accum_dtype="bf16") == {"grad_accum_dtype": "bf16"}
    assert _data_types(zero_stage=stage, precision="bf16", grad_accum_dtype="auto") is None


def test_reduction_dtype_is_a_key() -> None:
    def comm_dtype(**kwargs) -> str | None:
        return deepspeed_config(DeepSpeedConfig(**kwargs), OptimConfig(), 2, 2, device="cpu").get("communication_data_type")

    assert comm_dtype(precision="bf16") is None  # DeepSpeed's default: reduce in the model dtype
    assert comm_dtype(precision="bf16", reduce_dtype="fp32") == "fp32"
    assert comm_dtype(precision="fp32", reduce_dtype="fp32") is None


def test_fp32_training_and_zero0_leave_deepspeeds_default() -> None:
    assert _data_types(zero_stage=2, precision="fp32") is None
    # DeepSpeed 0.19 has no fp32 accumulation for ZeRO-0 bf16 (it raises on the mix): documented, not passed
    assert _data_types(zero_stage=0, precision="bf16") is None


def test_bf16_accumulation_without_bf16_is_refused_in_one_line(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[deepspeed]\nprecision = "fp32"\ngrad_accum_dtype = "bf16"\n')
    with pytest.raises(ConfigError, match="grad_accum_dtype=bf16 needs precision=bf16") as error:
        load_config(PretrainConfig, path)
    assert "\n" not in str(error.value)
    path.write_text("[train]\nmax_nonfinite = 0\n")
    with pytest.raises(ConfigError, match="train.max_nonfinite must be >= 1"):
        load_config(PretrainConfig, path)


def test_guard_counts_in_a_row_and_names_the_last_checkpoint() -> None:
    guard = NonFiniteGuard(limit=3, run_dir="runs/x", last_checkpoint=20)
    inf, ok = torch.tensor(float("inf")), torch.tensor(1.0)
    assert guard.skip(torch.tensor(float("nan")), 21) and guard.skip(inf, 21)
    assert not guard.skip(ok, 21) and guard.in_a_row == 0 and guard.skipped == 2
    assert guard.skip(inf, 22) and guard.skip(inf, 22)
    with pytest.raises(NonFiniteLossError, match=r"^step 23: 3 non-finite losses in a row \(train.max_nonfinite=3\); "
                                                  r"last good checkpoint: step 20 in runs/x;"):
        guard.skip(inf, 23)
    assert guard.skipped == 5


def test_fault_makes_only_the_last_ranks_losses_inf() -> None:
    fault = NonFiniteFault(at_step=2, count=2, on_this_rank=True)
    out = [float(fault(torch.tensor(1.0), step)) for step in (1, 2, 2, 3, 3)]
    assert out == [1.0, float("inf"), float("inf"), 1.0, 1.0]
    assert float(NonFiniteFault(at_step=1, count=5, on_this_rank=False)(torch.tensor(1.0), 1)) == 1.0
