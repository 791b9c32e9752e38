"""Each job's config holds the keys that job reads, and each setting is stated once.

Keys one job reads and another ignores live in that job's section class (``train.image_every``
is pre-training's, ``tracking.registered_model`` fine-tuning's); the clip the loader cuts follows
the ``[model]`` section instead of being a second pair of keys that must agree with it.
"""

from __future__ import annotations

import pytest

from jobs.registry import JOBS
from pipeline.core.config import ConfigError, describe, load_config, to_dict, with_values
from pipeline.train.config import PretrainConfig
from pipeline.train.finetune_config import EvaluateConfig, FinetuneConfig


def _keys(job: str) -> set[str]:
    return {key for key, *_ in describe(JOBS[job].config_class())}


# key -> the jobs that read it (among pretrain, finetune, evaluate, extract)
OWNERS = {
    "train.image_every": {"pretrain"},
    "train.export": {"pretrain"},
    "model.normalize_target": {"pretrain"},
    "mask.encoder_ratio": {"pretrain"},
    "model.num_classes": {"finetune", "evaluate", "extract"},
    "model.adapter_dim": {"finetune", "evaluate", "extract"},
    "tracking.registered_model": {"finetune"},
    "mixup.prob": {"finetune"},
    "finetune.mode": {"finetune"},
    "data.repeated_aug": {"pretrain", "finetune"},
    "data.scales": {"pretrain", "finetune"},
    "data.shuffle_buffer": {"pretrain", "finetune"},
    "data.test_num_clips": {"finetune", "evaluate", "extract"},
    "model.drop_path": {"pretrain", "finetune"},
    "model.grad_checkpointing": {"pretrain", "finetune"},
    "optim.lr": {"pretrain", "finetune"},
    "train.steps": {"pretrain", "finetune"},
    "eval.topk": {"evaluate"},
    "extract.mode": {"extract"},
    "model.num_frames": {"pretrain", "finetune", "evaluate", "extract"},
    "model.layer_scale_init": {"pretrain", "finetune", "evaluate", "extract"},
}


@pytest.mark.parametrize("key", sorted(OWNERS))
def test_a_key_is_offered_by_exactly_the_jobs_that_read_it(key: str) -> None:
    offered = {job for job in ("pretrain", "finetune", "evaluate", "extract") if key in _keys(job)}
    assert offered == OWNERS[key], f"{key} offered by {sorted(offered)}, read by {sorted(OWNERS[key])}"


@pytest.mark.parametrize("job", ["pretrain", "finetune", "evaluate", "extract"])
def test_no_setting_has_two_keys(job: str) -> None:
    keys = _keys(job)
    for twin in ("data.num_frames", "data.input_size", "tracking.log_every", "tracking.image_every"):
        assert twin not in keys, f"{job} offers {twin}, a second key for a setting stated elsewhere"


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, EvaluateConfig])
def test_the_clip_the_loader_cuts_follows_the_model(cls: type) -> None:
    cfg = load_config(cls, None, ["model.num_frames=8", "model.img_size=64"])
    assert (cfg.data.num_frames, cfg.data.input_size) == (8, 64)
    again = with_values(cfg, {"model.num_frames": 4})
    assert again.data.num_frames == 4 and cfg.data.num_frames == 8, "a copy follows its own model; the original stays"
    assert "num_frames" not in to_dict(cfg)["data"], "the saved config states the clip size once, under [model]"
    with pytest.raises(ConfigError, match=r"^data\.num_frames is not a key of this job: it follows model\.num_frames"):
        load_config(cls, None, ["data.num_frames=8"])
    with pytest.raises(ConfigError, match=r"^data\.input_size is not a key of this job: it follows model\.img_size"):
        with_values(cfg, {"data.input_size": 32})
