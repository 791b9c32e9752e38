"""The shipped configs follow the official VideoMAE V2 recipe (OpenGVLab/VideoMAEv2).

The official lr rule (run_mae_pretraining.py, run_class_finetuning.py): ``--lr``, ``--min_lr`` and
``--warmup_lr`` times ``total_batch_size / 256``, ``total_batch_size = batch_size x ranks (x
update_freq)`` videos per step; each video gives ``--num_sample`` clips (our data.repeated_aug).
Our data.batch_size counts clips, so a config gives the official peak lr for *its* videos per
step when its optim.blr is the official script's --lr.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.pipeline import JOBS
from pipeline.core.config import load_config
from pipeline.infra.engine import LrSchedule, videos_per_step
from pipeline.train.job_configs import FinetuneConfig, PretrainConfig
from pipeline.workflow.pipeline_config import PipelineConfig, plan_stages

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs/configs"

# config -> (the official --lr per 256 videos and its source, official --min_lr, our peak lr for our videos per step)
OFFICIAL = {
    # scripts/pretrain/vit_b_hybrid_pt.sh: --lr 1e-3, --batch_size 32 x 32 GPUs, --num_sample 4 -> 4e-3 there
    "pretrain/vit_b_k400": (1e-3, 1e-5, 2.5e-4),        # 8 x 32 clips / 4 = 64 videos
    # no V2 ViT-S pre-training script: the B, L and H scripts' --lr 1e-3
    "pretrain/vit_s_k400": (1e-3, 1e-5, 5e-4),          # 8 x 64 / 4 = 128 videos
    # scripts/pretrain/vit_g_hybrid_pt.sh: --lr 6e-4, --batch_size 32 x 64 GPUs, --num_sample 4 -> 4.8e-3 there
    "pretrain/vit_g_hybrid": (6e-4, 1e-5, 4.5e-4),      # 64 x 12 / 4 = 192 videos
    "pretrain/vit_g_offload": (6e-4, 1e-5, 4.6875e-6),  # 2 x 1 / 1 = 2 videos
    # scripts/finetune/vit_b_k400_ft.sh: --lr 7e-4, --batch_size 16 x 32 GPUs, --num_sample 2 (default) -> 1.4e-3
    "finetune/vit_b_k400": (7e-4, 1e-6, 2.625e-4),      # 8 x 24 / 2 = 96 videos
}
# the demos were tuned when the lr scaled with clips: their peak (and final) lr stay what they were
DEMOS = {"pretrain/demo": (1.5e-3 * 16 / 256, 1e-5), "finetune/demo": (1e-3 * 16 / 256, 1e-6)}
JOB = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def _schedule(cfg) -> LrSchedule:
    videos = videos_per_step(cfg.data.batch_size, cfg.scaling.num_workers, cfg.deepspeed.gradient_accumulation_steps,
                             cfg.data.repeated_aug)
    return LrSchedule.for_run(cfg.optim, cfg.train.steps, videos)


def test_every_shipped_training_config_is_checked():
    shipped = {f"{p.parent.name}/{p.stem}" for job in JOB for p in (CONFIGS / job).glob("*.toml")}
    assert shipped == set(OFFICIAL) | set(DEMOS)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_shipped_config_peak_lr_is_the_official_one_for_its_videos_per_step(name):
    cfg = load_config(JOB[name.split("/")[0]], CONFIGS / f"{name}.toml")
    official_lr, official_min_lr, peak = OFFICIAL[name]
    videos = videos_per_step(cfg.data.batch_size, cfg.scaling.num_workers, cfg.deepspeed.gradient_accumulation_steps,
                             cfg.data.repeated_aug)
    sched = _schedule(cfg)
    assert sched.base_lr == pytest.approx(official_lr * videos / 256, rel=1e-12)
    assert sched.base_lr == pytest.approx(peak, rel=1e-12)
    assert sched.min_lr == pytest.approx(official_min_lr * videos / 256, rel=1e-12)
    assert sched(0) == sched.start_lr == 0.0  # official warm-up starts at 0


@pytest.mark.parametrize("name", sorted(DEMOS))
def test_demo_lr_stays_as_tuned(name):
    cfg = load_config(JOB[name.split("/")[0]], CONFIGS / f"{name}.toml")
    sched = _schedule(cfg)
    assert (sched.base_lr, sched.min_lr) == pytest.approx(DEMOS[name], rel=1e-12)


def test_pipeline_demo_lr_stays_as_tuned(tmp_path):
    pipe = load_config(PipelineConfig, CONFIGS / "pipeline/demo.toml", [f"pipeline.output={tmp_path}"])
    stages = {s.name: s.cfg for s in plan_stages(pipe, JOBS, "sqlite:////tmp/never-opened.db")}
    for stage, tuned in {"pretrain": (1.5e-3, 1e-5), "finetune": (2e-3, 1e-6), "baseline": (2e-3, 1e-6)}.items():
        sched = _schedule(stages[stage])
        assert (sched.base_lr, sched.min_lr) == pytest.approx(tuned, rel=1e-12), stage
