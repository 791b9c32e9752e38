"""jobs.plan: parameters, FLOPs and ZeRO memory, as JSON through the real entry point."""

import json

import pytest

from jobs._cli import job_main
from jobs.plan import PlanConfig, run, zero_memory


def plan_json(capsys, *overrides):
    argv = ["--json"] + [a for o in overrides for a in ("--set", o)]
    assert job_main(PlanConfig, run, argv, prog="jobs.plan", default_config="plan/default.toml") == 0
    return json.loads(capsys.readouterr().out)


def test_vit_g_plan(capsys):
    out = plan_json(capsys, "model.name=vit_g", "plan.world_size=8")
    assert out["params"]["encoder"] / 1e6 == pytest.approx(1011, rel=0.01)
    assert out["params"]["total"] == out["params"]["encoder"] + out["params"]["decoder"]
    flops = out["flops_per_clip"]
    assert flops["with_decoder_masking"]["decoder_gmacs"] < flops["without_decoder_masking"]["decoder_gmacs"]
    assert flops["with_decoder_masking"]["train_gflops"] == pytest.approx(3 * flops["with_decoder_masking"]["forward_gflops"])
    mem, p = out["memory_gib_per_gpu"], out["params"]["total"]
    assert mem["stage0"] == pytest.approx(16 * p / 1024**3)
    assert mem["stage3"] == pytest.approx(16 * p / 8 / 1024**3)
    assert mem["stage0"] > mem["stage1"] > mem["stage2"] > mem["stage3"]


def test_vit_b_ratio_matches_paper(capsys):
    out = plan_json(capsys, "model.name=vit_b")
    assert out["flops_per_clip"]["dual_over_single"] == pytest.approx(25.87 / 35.48, rel=0.05)


def test_zero_memory_formulas():
    assert zero_memory(10, 4, "bf16") == {"stage0": 160, "stage1": 40 + 30, "stage2": 20 + 35, "stage3": 40}
    assert zero_memory(10, 1, "fp32")["stage0"] == 160


def test_table_and_bad_key(capsys):
    assert job_main(PlanConfig, run, ["--set", "model.name=vit_s"], default_config="plan/default.toml") == 0
    text = capsys.readouterr().out
    assert "ZeRO-3" in text and "dual" in text
    assert job_main(PlanConfig, run, ["--set", "plan.wrld_size=2"], default_config="plan/default.toml") == 2
    assert "world_size" in capsys.readouterr().err


def test_readme_config_table_matches_the_shipped_configs():
    from pathlib import Path

    from jobs.plan import config_rows, config_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert config_table() in readme, "README table is stale: paste `python -m jobs.plan --table`"
    rows = {r["config"]: r for r in config_rows()}
    g = rows["pretrain/vit_g_hybrid"]  # 1025.5M params x 16 bytes / 64 GPUs under ZeRO-3
    assert g["model_states_gib"] == pytest.approx(g["params_m"] * 1e6 * 16 / 64 / 1024**3)
    offload = rows["pretrain/vit_g_offload"]  # optimizer state on NVMe: 2 + 2 bytes per param / 2 ranks
    assert offload["model_states_gib"] == pytest.approx(offload["params_m"] * 1e6 * 4 / 2 / 1024**3)


def test_shm_per_node_of_the_shipped_configs():
    """`jobs.plan --shm`: (workers x prefetch + 1) batches of uint8 clips per loader, per rank, per node."""
    from jobs.plan import GIB, shm_rows, shm_table

    rows = {r["config"]: r for r in shm_rows(gpus_per_node=8)}
    s = rows["pretrain/vit_s_k400"]  # 10 workers x 4 prefetch x 64 clips of 16x224, 1568 tokens, 8 GPUs
    clip = 3 * 16 * 224 * 224 + 8 * 16 + 8 + 2 * 1568
    assert s["ranks_per_node"] == 8 and s["shm_gib_per_rank"] == pytest.approx((10 * 4 + 1) * 64 * clip / GIB)
    assert s["shm_gib_per_node"] == pytest.approx(8 * s["shm_gib_per_rank"])
    assert s["shm_gib_per_node_float32"] / s["shm_gib_per_node"] == pytest.approx(4, rel=0.01)  # before: float32
    f = rows["finetune/vit_b_k400"]  # training loader + the validation loader (1 view per video) together
    assert f["shm_gib_per_rank"] == pytest.approx(41 * 24 * ((3 * 16 * 224 * 224 + 8 * 16 + 8) + (3 * 16 * 224 * 224 + 8)) / GIB)
    assert rows["pretrain/demo"]["ranks_per_node"] == 2 and shm_rows(gpus_per_node=4)[1]["ranks_per_node"] == 4
    assert "`pretrain/vit_s_k400` | 8 | 10 x 4 x 64 | 5.89 | 47.1 | 188.4 |" in shm_table()
