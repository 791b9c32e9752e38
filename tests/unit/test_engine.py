"""The engine's pure parts: lr schedule, DeepSpeed JSON, config checks, optimizer groups.

Nothing here imports deepspeed or starts a process group (tests/integration/test_engine_dist.py
trains real engines on 1 and 2 CPU ranks).
"""

import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.core.config import ConfigError, load_config
from pipeline.infra.engine import (
    DeepSpeedConfig,
    EngineError,
    LrSchedule,
    OptimConfig,
    compute_dtype,
    deepspeed_config,
    final_lr,
    global_batch,
    lr_at,
    peak_lr,
    set_lr,
    videos_per_step,
    warmup_start_lr,
    warmup_steps,
)
from pipeline.models import create_model, param_groups

TINY = dict(num_frames=4, img_size=32)


# ---- lr --------------------------------------------------------------------------------------


def official_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0,
                              start_warmup_value=0, warmup_steps=-1):
    """Oracle: OpenGVLab/VideoMAEv2 utils.py ``cosine_scheduler`` (lines 433-458), restated.

    run_mae_pretraining.py / run_class_finetuning.py call it without ``start_warmup_value`` (so the
    warm-up starts at 0) and index it with the optimizer step (``it = start_steps + step``)."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_steps > 0:
        warmup_iters = warmup_steps
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = np.array([final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / (len(iters))))
                         for i in iters])
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


# (epochs, niter_per_ep, warmup_epochs, warmup_steps) of the official call -> our (total, warmup) run
SHAPES = [(10, 7, 2, -1), (200, 1, 20, -1), (30, 4, 0, -1), (12, 5, 1, 3), (5, 3, 1, 1), (8, 2, 1, 2), (1, 6, 0, -1)]


@pytest.mark.parametrize("epochs, niter, warmup_epochs, official_warmup_steps", SHAPES)
@pytest.mark.parametrize("warmup_blr", [0.0, 2e-5])
def test_schedule_equals_the_official_cosine_scheduler_step_by_step(epochs, niter, warmup_epochs,
                                                                    official_warmup_steps, warmup_blr):
    total = epochs * niter
    warm = official_warmup_steps if official_warmup_steps > 0 else warmup_epochs * niter
    # the same run stated both ways ours can: warm-up steps, and warm-up as a fraction (epochs / epochs)
    configs = [OptimConfig(blr=1e-3, min_blr=1e-5, warmup_blr=warmup_blr, warmup_steps=warm, warmup_fraction=0.0)]
    if official_warmup_steps <= 0:
        configs.append(OptimConfig(blr=1e-3, min_blr=1e-5, warmup_blr=warmup_blr,
                                   warmup_fraction=warmup_epochs / epochs))
    videos = 64  # official total_batch_size: --lr, --min_lr, --warmup_lr all times 64 / 256
    oracle = official_cosine_scheduler(1e-3 * videos / 256, 1e-5 * videos / 256, epochs, niter, warmup_epochs,
                                       start_warmup_value=warmup_blr * videos / 256,
                                       warmup_steps=official_warmup_steps)
    for cfg in configs:
        assert warmup_steps(cfg, total) == warm
        sched = LrSchedule.for_run(cfg, total, videos)
        ours = [sched(step) for step in range(total)]
        assert ours == pytest.approx(oracle.tolist(), rel=1e-12, abs=1e-15)
        assert sched(total) == sched(total + 100) == pytest.approx(1e-5 * videos / 256)  # past the end: the min


def test_lr_scales_with_videos_per_step_not_clips():
    # measured bug: 2 ranks x 8 clips with data.repeated_aug 4 at optim.blr 1e-3 peaked at 6.25e-5 (16 clips);
    # official: total_batch_size = batch_size x ranks counts videos -> 4 videos per step -> 1e-3 x 4 / 256
    videos = videos_per_step(micro_batch=8, world_size=2, grad_accum=1, views_per_video=4)
    assert videos == 4
    cfg = OptimConfig(blr=1e-3, min_blr=1e-5, warmup_blr=1e-6)
    assert peak_lr(cfg, videos) == pytest.approx(1.5625e-5)
    assert final_lr(cfg, videos) == pytest.approx(1e-5 * 4 / 256)  # min and warm-up start scale alike
    assert warmup_start_lr(cfg, videos) == pytest.approx(1e-6 * 4 / 256)
    ds = deepspeed_config(DeepSpeedConfig(), cfg, micro_batch=8, world_size=2, device="cpu", views_per_video=4)
    assert ds["optimizer"]["params"]["lr"] == pytest.approx(1.5625e-5)
    assert ds["train_batch_size"] == 16  # DeepSpeed still counts clips
    assert videos_per_step(8, 4, 2) == global_batch(8, 4, 2) == 64  # one view per video: clips = videos
    assert peak_lr(OptimConfig(lr=3e-4), 2048) == 3e-4  # an absolute lr wins
    with pytest.raises(ValueError, match="data.repeated_aug"):
        videos_per_step(8, 2, 1, 0)


def test_warmup_fraction_and_constant_schedule():
    cfg = OptimConfig(warmup_fraction=0.1, schedule="constant")
    assert warmup_steps(cfg, 200) == 20
    assert warmup_steps(OptimConfig(warmup_fraction=0.07), 100) == 7  # 0.07 x 100 = 7.000000000000001
    assert warmup_steps(OptimConfig(warmup_steps=7, warmup_fraction=0.5), 200) == 7
    assert warmup_steps(OptimConfig(warmup_steps=70), 50) == 50  # never longer than the run
    assert lr_at(0, cfg, 200, 1.0) == 0.0  # the official warm-up starts at 0
    assert lr_at(19, cfg, 200, 1.0) == pytest.approx(1.0)
    assert lr_at(150, cfg, 200, 1.0) == 1.0
    no_warm = OptimConfig(warmup_fraction=0.0, min_blr=0.0)
    assert lr_at(0, no_warm, 100, 1.0) == pytest.approx(1.0)
    assert math.isfinite(lr_at(0, no_warm, 0, 1.0))  # zero-step run does not divide by zero


@pytest.mark.parametrize("key, value", [("blr", 0.0), ("min_blr", -1e-5), ("warmup_blr", -1.0), ("lr", -1.0),
                                        ("warmup_fraction", 1.0), ("warmup_steps", -1)])
def test_a_bad_lr_setting_is_one_line_naming_its_key(key, value):
    with pytest.raises(ValueError, match=rf"^optim\.{key} ") as err:
        OptimConfig(**{key: value})
    assert "\n" not in str(err.value)


def test_set_lr_honours_each_groups_lr_scale():
    groups = [{"lr_scale": 1.0, "lr": 0.0}, {"lr_scale": 0.25, "lr": 0.0}, {"lr": 0.0}]
    engine = SimpleNamespace(optimizer=SimpleNamespace(param_groups=groups))
    sched = LrSchedule(OptimConfig(warmup_steps=5), total_steps=100, base_lr=8e-4)
    assert sched.apply(engine, 2) == pytest.approx(4e-4)
    assert [g["lr"] for g in groups] == pytest.approx([4e-4, 1e-4, 4e-4])
    set_lr(engine, 1.0)
    assert [g["lr"] for g in groups] == [1.0, 0.25, 1.0]


# ---- DeepSpeed JSON --------------------------------------------------------------------------


def test_every_optimizer_field_reaches_the_deepspeed_config():
    optim = OptimConfig(lr=2e-4, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)
    ds = DeepSpeedConfig(zero_stage=2, precision="bf16", grad_clip=0.02, gradient_accumulation_steps=3)
    cfg = deepspeed_config(ds, optim, micro_batch=4, world_size=2, device="cpu")
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": 2e-4, "betas": [0.8, 0.99], "eps": 1e-6,
                                                            "weight_decay": 0.1, "torch_adam": True}}
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 24
    assert cfg["gradient_clipping"] == 0.02
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert cfg["zero_optimization"]["stage"] == 2 and "scheduler" not in cfg
    assert cfg["checkpoint"] == {"load_universal": False}


def test_lr_defaults_to_the_scaled_base_lr():
    cfg = deepspeed_config(DeepSpeedConfig(), OptimConfig(blr=1e-4), micro_batch=8, world_size=4, device="cpu")
    assert cfg["optimizer"]["params"]["lr"] == pytest.approx(1e-4 * 32 / 256)


def test_optimizer_implementation_per_device():
    offload = DeepSpeedConfig(zero_stage=2, offload_optimizer="cpu")
    gpu_offload = deepspeed_config(offload, OptimConfig(), 2, 1, device="cuda")["optimizer"]["params"]
    assert "torch_adam" not in gpu_offload  # DeepSpeed's CPU Adam for the CPU-side step
    gpu = deepspeed_config(DeepSpeedConfig(), OptimConfig(), 2, 1, device="cuda")["optimizer"]["params"]
    assert gpu["torch_adam"] and gpu["fused"]
    forced = deepspeed_config(offload, OptimConfig(impl="torch"), 2, 1, device="cuda")["optimizer"]["params"]
    assert forced["torch_adam"]
    cpu = deepspeed_config(offload, OptimConfig(), 2, 1, device="cpu")
    assert cpu["optimizer"]["params"]["torch_adam"] and "fused" not in cpu["optimizer"]["params"]
    assert cpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}


def test_stage3_knobs_and_nvme_offload_sections(tmp_path):
    ds = DeepSpeedConfig(zero_stage=3, offload_optimizer="nvme", offload_param="cpu", nvme_path=str(tmp_path),
                         stage3_prefetch_bucket_size=123, stage3_param_persistence_threshold=7,
                         aio_queue_depth=16, overlap_comm=False)
    cfg = deepspeed_config(ds, OptimConfig(), 1, 2, device="cpu")
    zero = cfg["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == 123 and zero["stage3_param_persistence_threshold"] == 7
    assert zero["overlap_comm"] is False and "allgather_bucket_size" not in zero
    assert zero["offload_optimizer"]["device"] == "nvme" and zero["offload_optimizer"]["nvme_path"] == str(tmp_path)
    assert zero["offload_param"]["device"] == "cpu"
    assert cfg["aio"]["queue_depth"] == 16
    assert "aio" not in deepspeed_config(DeepSpeedConfig(zero_stage=3), OptimConfig(), 1, 2, device="cpu")


def test_precision_sections_and_fp16_needs_a_gpu():
    fp32 = deepspeed_config(DeepSpeedConfig(precision="fp32"), OptimConfig(), 2, 1, device="cpu")
    assert "bf16" not in fp32 and "fp16" not in fp32
    fp16 = deepspeed_config(DeepSpeedConfig(precision="fp16"), OptimConfig(), 2, 1, device="cuda")
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    with pytest.raises(EngineError, match="fp16 needs a GPU"):
        deepspeed_config(DeepSpeedConfig(precision="fp16"), OptimConfig(), 2, 1, device="cpu")
    assert compute_dtype(DeepSpeedConfig(precision="bf16")) is torch.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    (dict(zero_stage=4), "zero_stage"),
    (dict(zero_stage=2, offload_param="cpu"), "needs zero_stage 3"),
    (dict(zero_stage=0, offload_optimizer="cpu"), "zero_stage 1, 2 or 3"),
    (dict(zero_stage=2, offload_optimizer="nvme", nvme_path="/tmp"), "needs zero_stage 3"),
    (dict(zero_stage=3, offload_param="nvme"), "nvme_path"),
    (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps"),
])
def test_impossible_deepspeed_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepSpeedConfig(**kwargs)


def test_sections_load_from_toml_with_overrides(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Job:
        deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
        optim: OptimConfig = field(default_factory=OptimConfig)

    path = tmp_path / "job.toml"
    path.write_text("[deepspeed]\nzero_stage = 3\n[optim]\nbetas = [0.9, 0.999]\n")
    job = load_config(Job, path, ["optim.eps=1e-6", "deepspeed.precision=fp32"])
    assert job.deepspeed.zero_stage == 3 and job.deepspeed.precision == "fp32"
    assert job.optim.betas == (0.9, 0.999) and job.optim.eps == 1e-6
    with pytest.raises(ConfigError, match="betas"):
        load_config(Job, None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(Job, None, ["deepspeed.stage=3"])


def test_no_deepspeed_import_for_pure_parts():
    # Importing deepspeed is slow and fixes its accelerator; the config must not trigger it.
    code = "import sys, pipeline.infra.engine as e; e.deepspeed_config(e.DeepSpeedConfig(), e.OptimConfig(), 1, 1); " \
           "print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- optimizer groups ------------------------------------------------------------------------


def _group_of(groups):
    return {id(p): (g["weight_decay"], g["lr_scale"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("layer_decay", [1.0, 0.75])
def test_groups_follow_the_models_hooks(layer_decay):
    model = create_model("vit_tiny", "pretrain", **TINY)
    ours = _group_of(param_groups(model, 0.05, layer_decay, with_names=False))
    named = dict(model.named_parameters())
    assert ours[id(named["encoder.blocks.0.attn.qkv.weight"])][0] == 0.05
    for name in ("encoder.blocks.0.norm1.weight", "decoder.head.bias", "mask_token"):
        assert ours[id(named[name])][0] == 0.0, name
    assert not any("names" in g for g in param_groups(model, 0.05, layer_decay, with_names=False))


def test_groups_judge_zero3_placeholders_by_their_true_shape():
    """Under zero.Init every parameter is an empty 1-D placeholder with its shape in ``ds_shape``."""
    model = create_model("vit_tiny", "pretrain", **TINY)
    expected = {n: wd for n, p in model.named_parameters()
                for g in param_groups(model, 0.05) if any(q is p for q in g["params"]) for wd in [g["weight_decay"]]}
    for p in model.parameters():
        p.ds_shape = p.shape
        p.data = torch.empty(0)
    got = _group_of(param_groups(model, 0.05))
    assert {n: got[id(p)][0] for n, p in model.named_parameters()} == expected
    assert sum(wd > 0 for wd in expected.values()) > 5
