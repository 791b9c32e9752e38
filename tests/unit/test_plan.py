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


def test_cluster_plan_arithmetic_and_paper_check(capsys):
    """The capacity plan of the VideoMAE V2 ViT-g run: hours = clips x FLOPs / (GPUs x peak x MFU),
    the loader cores a GPU needs at the measured per-core rate, and checkpoint egress."""
    from jobs.plan import run_cluster

    argv = ["--json", "--set", "model.name=vit_g", "--set", "cluster.gpus=64", "--set", "cluster.mfu=0.5"]
    assert job_main(PlanConfig, run_cluster, argv, prog="jobs.plan", default_config="plan/default.toml") == 0
    out = json.loads(capsys.readouterr().out)
    p = out["plan"]
    clips = 1_350_000 * 1200 * 4
    assert p["clips"] == clips
    seconds = clips * p["train_gflops_per_clip"] * 1e9 / (64 * 312e12 * 0.5)
    assert p["hours_at_mfu"] == pytest.approx(seconds / 3600)
    assert p["loader_cores_per_gpu"] == pytest.approx(312e12 * 0.5 / (p["train_gflops_per_clip"] * 1e9) / 25.7)
    # the paper's ~241 h on 64 A100 is within a factor 2 of our FLOP count at a plausible MFU
    check = out["paper_check"]
    assert 0.3 < check["implied_mfu"] < 0.8
    # ViT-g checkpoint: 14 bytes per parameter; whole-checkpoint restore on 64 ranks moves 64x that
    params = out["sizes"][-1]
    assert params["model"] == "vit_g"
    assert p["egress_whole_per_rank"] == pytest.approx(64 * p["checkpoint_gb"])
    assert p["egress_own_files"] == pytest.approx(p["checkpoint_gb"])  # ZeRO-3: each rank its 1/64


def test_cluster_plan_says_small_models_are_data_bound():
    """ViT-S/B need far more loader cores per GPU than a 96-core, 8-GPU node has; ViT-g does not."""
    from jobs.plan import make_cluster_plan

    cfg = PlanConfig()
    rows = {r["model"]: r for r in make_cluster_plan(cfg)["sizes"]}
    assert rows["vit_s"]["data_bound"] and rows["vit_b"]["data_bound"]
    assert not rows["vit_g"]["data_bound"]
    assert rows["vit_b"]["mfu_reachable"] < cfg.cluster.mfu
    assert rows["vit_g"]["mfu_reachable"] == pytest.approx(cfg.cluster.mfu)
    cores = {n: r["loader_cores_per_gpu"] for n, r in rows.items()}
    assert cores["vit_s"] > cores["vit_b"] > cores["vit_l"] > cores["vit_h"] > cores["vit_g"]


def test_cluster_flag_through_the_command_line():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "jobs.plan", "--cluster", "--set", "cluster.gpu=h100"],
                          cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert "989 TFLOP/s" in proc.stdout and "VideoMAE V2 ViT-g check" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "jobs.plan", "--cluster", "--set", "cluster.mfu=1.5"],
                         cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
    assert bad.returncode == 2 and "cluster.mfu" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


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


def test_cluster_plan_states_shared_memory_per_node():
    """/dev/shm per node = GPUs per node x the loader's in-flight uint8 batches (jobs.plan --shm's rule)."""
    from jobs.plan import loader_shm_bytes, make_cluster_plan, train_clip_bytes
    from pipeline.core.config import load_config
    from pipeline.data.loader import FinetuneDataConfig

    cfg = load_config(PlanConfig, None, ["model.name=vit_g", "plan.batch_per_gpu=12", "cluster.loader_workers=10",
                                         "cluster.prefetch_factor=4", "cluster.gpus_per_node=8"])
    plan = make_cluster_plan(cfg)["plan"]
    data = FinetuneDataConfig(num_frames=16, input_size=224, batch_size=12, num_workers=10, prefetch_factor=4)
    tokens = 8 * 16 * 16
    assert plan["shm_gib_per_node"] == pytest.approx(8 * loader_shm_bytes(data, train_clip_bytes(data, tokens)) / 1024**3)
    assert 8 < plan["shm_gib_per_node"] < 10  # ~41 uint8 batches of 12 ViT-g clips per GPU


def test_readme_cluster_table_matches_the_plan():
    """The README's per-model feeding table is what `jobs.plan --cluster` computes at its defaults."""
    from pathlib import Path

    from jobs.plan import make_cluster_plan

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for r in make_cluster_plan(PlanConfig())["sizes"]:
        row = (f"| {r['model']} | {r['train_gflops_per_clip']:.1f} | {r['clips_per_s_per_gpu']:.0f} | "
               f"{r['loader_cores_per_gpu']:.1f} | {r['mfu_reachable']:.2f}")
        assert row in readme, f"README cluster table is stale: {row}"
