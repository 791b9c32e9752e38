"""What a launcher finds out on its driver before Ray starts, and the recipe weights bring along.

- A config the shard index cannot feed (a missing or empty split, fewer clips than one global
  batch) or an unknown model stops in one line naming the key and a fix, from ``prepare`` (no Ray).
- A worker's config / data error is never retried by Ray Train (``scaling.max_failures`` is for crashes).
- The pre-training export's card records the architecture and data recipe; fine-tuning,
  evaluation and extraction default to it, and a value the user gave that differs is kept and
  said once (or refused, where the weights fix it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from jobs._cli import job_main
from pipeline.core.config import ConfigError, given_keys, load_config, with_values
from pipeline.core.errors import DataError, StorageError
from pipeline.train.job_configs import EvaluateConfig, ExtractConfig, FinetuneConfig, PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
NO_TRACKING = "tracking.enabled=false"


def _index(root: Path, splits: dict[str, int], labels: tuple[str, ...] = ("a", "b")) -> str:
    """An index.json of one (unwritten) shard per split: the driver reads nothing else."""
    root.mkdir(parents=True, exist_ok=True)
    shards = [{"name": f"{split}-000000.tar", "split": split, "samples": n, "bytes": 0} for split, n in splits.items()]
    (root / "index.json").write_text(json.dumps({"shards": shards, "labels": list(labels)}))
    return str(root)


def _load(cls: type, job: str, *sets: str):  # noqa: ANN202
    return load_config(cls, ROOT / f"jobs/configs/{job}/demo.toml", [*sets, NO_TRACKING])


# -------------------------------------------------------------------------------------------------
# Item: failures found before Ray starts


def test_too_little_data_for_one_global_batch_stops_on_the_driver(tmp_path: Path) -> None:
    """The condition every rank's loader stops on (10 samples < 8 x 2 clips), raised by prepare() instead."""
    from jobs import finetune as finetune_job
    from jobs import pretrain as pretrain_job
    from pipeline.data.loader import TrainLoader

    shards = _index(tmp_path / "shards", {"train": 10, "val": 2})
    sets = (f"data.shards={shards}", f"run.output={tmp_path / 'runs'}", "data.batch_size=8", "scaling.num_workers=2",
            "data.repeated_aug=1")
    expected = (r"^data\.batch_size=8 x scaling\.num_workers=2 = 16 clips per step, but split 'train' of "
                rf"{shards} has 10 samples: lower data\.batch_size or scaling\.num_workers, or add data$")
    with pytest.raises(DataError, match=expected):
        pretrain_job.prepare(_load(PretrainConfig, "pretrain", *sets))
    with pytest.raises(DataError, match=expected):
        finetune_job.prepare(_load(FinetuneConfig, "finetune", *sets, "model.init=random"))
    cfg = _load(PretrainConfig, "pretrain", *sets)
    with pytest.raises(DataError, match=expected):  # the same words as the worker's loader
        TrainLoader(cfg.data, 0, 2)
    # 10 samples x 2 views = 20 clips: one global batch of 16 fits
    assert pretrain_job.prepare(_load(PretrainConfig, "pretrain", *sets[:-1], "data.repeated_aug=2"))
    with pytest.raises(DataError, match=r"x data\.repeated_aug=2 views = 20 clips: lower data\.batch_size"):
        pretrain_job.prepare(_load(PretrainConfig, "pretrain", *sets[:-1], "data.repeated_aug=2",
                                   "data.batch_size=11"))


def test_a_missing_or_empty_split_names_its_key(tmp_path: Path) -> None:
    from jobs import evaluate as evaluate_job
    from jobs import extract as extract_job
    from jobs import finetune as finetune_job

    shards = _index(tmp_path / "shards", {"train": 40, "test": 4, "val": 0})
    base = (f"data.shards={shards}", f"run.output={tmp_path / 'runs'}")
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(DataError, match=r"^finetune\.val_split='valid': .* has no 'valid' split \(its splits: test, "
                                        r"train, val\): set finetune\.val_split to one of them$"):
        finetune_job.prepare(_load(FinetuneConfig, "finetune", *base, "finetune.val_split=valid", "model.init=random"))
    with pytest.raises(DataError, match=r"^data\.split='val': split 'val' of .* has no samples: set data\.split"):
        evaluate_job.prepare(_load(EvaluateConfig, "evaluate", *base, "data.split=val", f"model.init={tmp_path / 'x.pt'}"))
    with pytest.raises(DataError, match=r"^data\.split='tset': .* has no 'tset' split"):
        extract_job.prepare(_load(ExtractConfig, "extract", *base, "data.split=tset", "model.init="))


def test_an_unknown_model_is_one_line_when_the_config_is_read(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from jobs import plan as plan_job
    from jobs import pretrain as pretrain_job

    names = "vit_tiny, vit_tiny_big, vit_s, vit_b, vit_l, vit_h, vit_g"
    with pytest.raises(ConfigError, match=rf"^model\.name='vit_x' is not a known model: set model\.name to one of "
                                          rf"{names}$"):
        load_config(PretrainConfig, None, ["model.name=vit_x"])
    for prog, cls, run in (("jobs.plan", plan_job.PlanConfig, plan_job.run),
                           ("jobs.pretrain", PretrainConfig, pretrain_job.run)):
        assert job_main(cls, run, ["--set", "model.name=vit_x"], prog=prog) == 2
        err = capsys.readouterr().err
        assert err == f"{prog}: error: model.name='vit_x' is not a known model: set model.name to one of {names}\n"
    with pytest.raises(ConfigError, match=r"^\[model\] 64 frames x 60px do not tile .*: change model\.num_frames"):
        pretrain_job.prepare(_load(PretrainConfig, "pretrain", "model.num_frames=64", "model.img_size=60"))


def test_a_worker_config_or_data_error_is_never_retried() -> None:
    """Ray Train's policy retries a worker group up to max_failures: not for an error that cannot change."""
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from pipeline.orchestration.ray_train import failure_policy, final_error

    def failed(exc: BaseException) -> WorkerGroupError:
        return WorkerGroupError("training failed", {1: exc})

    policy = failure_policy(FailureConfig(max_failures=3))
    assert final_error(failed(DataError("split 'train' has no samples")))
    assert policy.make_decision(failed(DataError("split 'train' has no samples"))) == FailureDecision.RAISE
    assert policy.make_decision(failed(ConfigError("model.name ..."))) == FailureDecision.RAISE
    assert policy.make_decision(failed(StorageError("s3 unreachable"))) == FailureDecision.RETRY, "may pass"
    assert policy.make_decision(failed(RuntimeError("worker crashed"))) == FailureDecision.RETRY


# -------------------------------------------------------------------------------------------------
# Item: weights carry their recipe


def test_load_config_knows_which_keys_the_user_gave(tmp_path: Path) -> None:
    cfg = _load(FinetuneConfig, "finetune", "data.sampling_rate=2")
    given = given_keys(cfg)
    assert {"data.sampling_rate", "model.name", "run.name", NO_TRACKING.split("=")[0]} <= given
    assert "model.patch_size" not in given, "a default is not the user's"
    assert given_keys(with_values(cfg, {"model.init": "x"})) == given, "resolving keeps what the user gave"
    assert given_keys(FinetuneConfig()) == frozenset()


def _pretrain_export(tmp_path: Path, *sets: str) -> tuple[Path, dict]:
    """A pre-training run's export/ written by export_weights (the checkpoint consolidation skipped)."""
    import pipeline.train.export as export
    from pipeline.models import create_model_from_config

    cfg = load_config(PretrainConfig, None, ["model.name=vit_tiny", "model.num_frames=4", "model.img_size=32",
                                             "model.patch_size=8", "data.sampling_rate=4", *sets])
    state = create_model_from_config(cfg.model, "pretrain").state_dict()
    run = tmp_path / "pretrain-run"
    original = export.consolidated_state
    export.consolidated_state = lambda _: state
    try:
        files = export.export_weights(tmp_path / "ckpt", cfg.model, str(run / "export"), cfg.data, {"run": "r"})
    finally:
        export.consolidated_state = original
    assert Path(files["card.json"]) == run / "export" / "card.json"
    return run, json.loads((run / "export" / "card.json").read_text())


def test_the_pretraining_export_records_its_recipe(tmp_path: Path) -> None:
    _, card = _pretrain_export(tmp_path)
    m, d = card["model"], card["data"]
    assert (m["name"], m["num_frames"], m["img_size"], m["patch_size"], m["tubelet_size"]) == ("vit_tiny", 4, 32, 8, 2)
    assert (d["num_frames"], d["sampling_rate"], d["input_size"]) == (4, 4, 32)
    assert d["mean"] == pytest.approx([0.485, 0.456, 0.406]) and d["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert card["class_names"] == [] and card["source"] == {"run": "r"}


def test_finetuning_defaults_to_the_recipe_and_says_where_the_user_differs(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.orchestration.driver import resolve_on_driver
    from pipeline.train.model_registry import FINETUNE_INIT_FILES

    run, _ = _pretrain_export(tmp_path)
    base = (f"model.init={run}", "data.shards=s3://b/s", "model.num_frames=4", "model.img_size=32")
    caplog.set_level(logging.INFO)
    adopted = resolve_on_driver(_load(FinetuneConfig, "finetune", *base), FINETUNE_INIT_FILES)
    assert adopted.model.init == str(run / "export" / "pretrain_fp32.pt")
    assert (adopted.model.patch_size, adopted.data.sampling_rate) == (8, 4), "no SET needed: the card's recipe"
    assert "model.patch_size: 0 -> 8 (the model card of" in caplog.text
    assert "differs" not in caplog.text

    caplog.clear()
    kept = resolve_on_driver(_load(FinetuneConfig, "finetune", *base, "data.sampling_rate=2"), FINETUNE_INIT_FILES)
    assert kept.data.sampling_rate == 2, "the user's value is kept"
    card = run / "export" / "card.json"
    lines = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert lines == [f"data.sampling_rate=2 differs from the model card's 4 ({card}): using 2"]

    with pytest.raises(ConfigError, match=r"^model\.patch_size=16 differs from the model card's 8 \(.*card\.json\): "
                                          r"the weights fix it; remove model\.patch_size"):
        resolve_on_driver(_load(FinetuneConfig, "finetune", *base, "model.patch_size=16"), FINETUNE_INIT_FILES)


def test_evaluation_and_extraction_default_to_a_model_folders_recipe(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """`make evaluate` without flags: the demo config sets no sampling rate, the card's 4 is used."""
    from pipeline.orchestration.driver import resolve_on_driver
    from pipeline.train.model_registry import ModelCard, write_model_folder

    folder = tmp_path / "finetune" / "export" / "best"
    card = ModelCard(model={"name": "vit_tiny", "num_frames": 8, "img_size": 64, "patch_size": 8, "num_classes": 6},
                     class_names=list("abcdef"), data={"sampling_rate": 4})
    write_model_folder({"w": torch.zeros(1)}, card, str(folder))
    caplog.set_level(logging.INFO)
    for cls, job in ((EvaluateConfig, "evaluate"), (ExtractConfig, "extract")):
        cfg = resolve_on_driver(_load(cls, job, f"model.init={tmp_path / 'finetune'}", "data.shards=s3://b/s"),
                                model_folders=True)
        assert (cfg.data.sampling_rate, cfg.model.patch_size, cfg.model.num_frames) == (4, 8, 8), job
        assert cfg.model.init == str(folder)
        kept = resolve_on_driver(_load(cls, job, f"model.init={folder}", "data.shards=s3://b/s",
                                       "data.sampling_rate=2"), model_folders=True)
        assert kept.data.sampling_rate == 2
        built = resolve_on_driver(_load(cls, job, f"model.init={folder}", "model.num_frames=16"), model_folders=True)
        assert built.model.num_frames == 8 and built.data.num_frames == 8, "the classifier is built from its card"
    card = folder / "model.json"
    assert f"data.sampling_rate=2 differs from the model card's 4 ({card}): using 2" in caplog.text
    assert (f"model.num_frames=16 differs from the model card's 8 ({card}): using 8 (a model folder's classifier is "
            "built from its card)") in caplog.text


def test_weights_that_do_not_fit_the_model_stop_on_the_driver(tmp_path: Path) -> None:
    """A raw weights file (no card: an official checkpoint, say) of another size or patch: one line
    naming model.init and model.name from prepare(), the model built on the meta device and the
    file memory-mapped; fitting weights pass (a pre-training checkpoint into a classifier too)."""
    from jobs import finetune as finetune_job
    from jobs import pretrain as pretrain_job
    from pipeline.models import create_model

    weights = tmp_path / "vit_tiny_p8.pt"
    torch.save(create_model("vit_tiny", "pretrain", num_frames=4, img_size=32, patch_size=8).state_dict(), weights)
    shards = _index(tmp_path / "shards", {"train": 64, "val": 8})
    sets = (f"data.shards={shards}", f"run.output={tmp_path / 'runs'}", "model.num_frames=4", "model.img_size=32",
            f"model.init={weights}")
    for job, cls, name in ((pretrain_job, PretrainConfig, "pretrain"), (finetune_job, FinetuneConfig, "finetune")):
        assert job.prepare(_load(cls, name, *sets, "model.patch_size=8"))  # fits
        with pytest.raises(ConfigError, match=rf"^model\.init={weights} does not fit model\.name='vit_s' .*"
                                              r"\(pretrain|classify\): checkpoint encoder has 2 blocks, the model 12: pick the matching size$"):
            job.prepare(_load(cls, name, *sets, "model.patch_size=8", "model.name=vit_s"))
        with pytest.raises(ConfigError, match=r"tubelet x patch size \[2, 8, 8\] in the checkpoint vs \[2, 16, 16\]"):
            job.prepare(_load(cls, name, *sets, "model.patch_size=16"))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^model\.init: .*empty\.pt is not a readable torch weights file \(EOFError: "):
        pretrain_job.prepare(_load(PretrainConfig, "pretrain", *sets[:-1], f"model.init={tmp_path / 'empty.pt'}"))
