"""Each job's config holds the keys that job reads, and each setting is stated once.

Keys one job reads and another ignores live in that job's section class (``train.image_every``
is pre-training's, ``tracking.registered_model`` fine-tuning's); the clip the loader cuts follows
the ``[model]`` section instead of being a second pair of keys that must agree with it.
"""

from __future__ import annotations

import pytest

from jobs.registry import JOBS
from pipeline.core.config import ConfigError, describe, load_config, to_dict, with_values
from pipeline.train.job_configs import DistillConfig, EvaluateConfig, FinetuneConfig, PretrainConfig


def _keys(job: str) -> set[str]:
    return {key for key, *_ in describe(JOBS[job].config_class())}


# key -> the jobs that read it (among pretrain, finetune, evaluate, extract)
OWNERS = {
    "train.image_every": {"pretrain"},
    "train.export": {"pretrain"},
    "model.normalize_target": {"pretrain"},
    "mask.encoder_ratio": {"pretrain"},
    "model.num_classes": {"finetune", "evaluate", "extract", "distill"},
    "model.adapter_dim": {"finetune", "evaluate", "extract", "distill"},
    "tracking.registered_model": {"finetune", "distill"},
    "mixup.prob": {"finetune", "distill"},
    "finetune.mode": {"finetune", "distill"},
    "data.repeated_aug": {"pretrain", "finetune", "distill"},
    "data.scales": {"pretrain", "finetune", "distill"},
    "data.shuffle_buffer": {"pretrain", "finetune", "distill"},
    "data.test_num_clips": {"finetune", "evaluate", "extract", "distill"},
    "model.drop_path": {"pretrain", "finetune", "distill"},
    "model.grad_checkpointing": {"pretrain", "finetune", "distill"},
    "optim.lr": {"pretrain", "finetune", "distill"},
    "train.steps": {"pretrain", "finetune", "distill"},
    "distill.teacher": {"distill"},
    "distill.alpha": {"distill"},
    "eval.topk": {"evaluate"},
    "extract.mode": {"extract"},
    "model.num_frames": {"pretrain", "finetune", "evaluate", "extract", "distill"},
    "model.layer_scale_init": {"pretrain", "finetune", "evaluate", "extract", "distill"},
}


@pytest.mark.parametrize("key", sorted(OWNERS))
def test_a_key_is_offered_by_exactly_the_jobs_that_read_it(key: str) -> None:
    offered = {job for job in ("pretrain", "finetune", "distill", "evaluate", "extract") if key in _keys(job)}
    assert offered == OWNERS[key], f"{key} offered by {sorted(offered)}, read by {sorted(OWNERS[key])}"


@pytest.mark.parametrize("job", ["pretrain", "finetune", "distill", "evaluate", "extract"])
def test_no_setting_has_two_keys(job: str) -> None:
    keys = _keys(job)
    for twin in ("data.num_frames", "data.input_size", "tracking.log_every", "tracking.image_every"):
        assert twin not in keys, f"{job} offers {twin}, a second key for a setting stated elsewhere"


@pytest.mark.parametrize("cls", [PretrainConfig, FinetuneConfig, DistillConfig, EvaluateConfig])
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


def test_a_model_folder_brings_its_architecture_and_clip(tmp_path, caplog) -> None:  # noqa: ANN001
    """Evaluation of a model folder cuts the clip its card records, whatever [model] said (logged)."""
    from pipeline.orchestration.driver import resolve_on_driver
    from pipeline.train.model_registry import ModelCard, write_model_folder

    folder = tmp_path / "export" / "best"
    card = ModelCard(model={"name": "vit_tiny", "num_frames": 4, "img_size": 32, "patch_size": 8, "num_classes": 3,
                            "drop_path": 0.1}, class_names=["a", "b", "c"])
    write_model_folder({}, card, str(folder))
    cfg = load_config(EvaluateConfig, None, [f"model.init={folder}", "data.shards=s3://b/s", "tracking.enabled=false"])
    caplog.set_level("INFO")
    resolved = resolve_on_driver(cfg, model_folders=True)
    m = resolved.model
    assert (m.name, m.num_frames, m.img_size, m.patch_size, m.num_classes) == ("vit_tiny", 4, 32, 8, 3)
    assert (resolved.data.num_frames, resolved.data.input_size) == (4, 32), "the loader cuts the model's clip"
    assert (cfg.model.num_frames, cfg.data.num_frames) == (16, 16), "the given config is left as it was"
    assert "model.num_frames: 16 -> 4 (the model card of" in caplog.text
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    plain = resolve_on_driver(with_values(cfg, {"model.init": str(weights)}), model_folders=True)
    assert plain.model.num_frames == 16, "a weights file has no card: [model] describes it"
