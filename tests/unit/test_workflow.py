"""The pipeline's config, wiring, fingerprints and completion checks (no Ray, no training)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from jobs._cli import rounded
from jobs.dataset import DatasetJobConfig
from jobs.pipeline import JOBS, format_summary
from pipeline.core.config import ConfigError, load_config
from pipeline.workflow import (
    EXPORTS,
    Runner,
    StageError,
    changed_keys,
    check_evaluate,
    check_finetune,
    check_pretrain,
    compact_toml,
    fingerprint,
    load_state,
    mlflow_ui_command,
    run_pipeline,
    save_state,
    summarize,
)
from pipeline.workflow.pipeline_config import PipelineConfig, Stage, StageJob, given, plan_stages, stable_config

REPO = Path(__file__).resolve().parents[2]
URI = "sqlite:////tmp/never-opened.db"


# The shipped demo's [pipeline] and [shard] tables, with empty stage tables: every stage config
# below is its base file's (jobs/configs/<stage>/demo.toml) plus what a test gives.
PLAIN = """
[pipeline]
name = "demo"
baseline = true
[shard]
manifest = "data/synthetic/manifest.csv"
output = "data/shards/synthetic"
"""


def _cfg(tmp_path: Path, *overrides: str) -> PipelineConfig:
    (tmp_path / "plain.toml").write_text(PLAIN)
    return load_config(PipelineConfig, tmp_path / "plain.toml", [f"pipeline.output={tmp_path / 'runs'}", *overrides])


def _stages(tmp_path: Path, *overrides: str) -> dict[str, Stage]:
    return {s.name: s for s in plan_stages(_cfg(tmp_path, *overrides), JOBS, URI)}


def test_stage_tables_are_unset_until_given(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "pretrain.train.steps=7", "finetune.optim.betas=[0.9, 0.99]")
    assert given(cfg.pretrain) == {"train.steps": 7}
    assert given(cfg.finetune) == {"optim.betas": [0.9, 0.99]}
    assert given(cfg.evaluate) == {} and cfg.pretrain.config == "pretrain/demo"
    assert "[pretrain.train]\nsteps = 7" in compact_toml(cfg) and "[pretrain.model]" not in compact_toml(cfg)


def test_the_shipped_demo_pretrains_and_finetunes_one_architecture(tmp_path: Path) -> None:
    """pipeline/demo.toml changes the stage recipes; the stages it chains must still fit together."""
    cfg = load_config(PipelineConfig, REPO / "jobs/configs/pipeline/demo.toml", [f"pipeline.output={tmp_path}"])
    s = {x.name: x for x in plan_stages(cfg, JOBS, URI)}
    pt, ft, ev, bl = s["pretrain"].cfg, s["finetune"].cfg, s["evaluate"].cfg, s["baseline"].cfg
    assert pt.data.split == "unlabelled+train" and ft.data.split == "train" and ev.data.split == "test"
    assert ft.finetune.val_split == "val"
    for key in ("name", "patch_size", "num_frames", "img_size"):
        assert getattr(pt.model, key) == getattr(ft.model, key) == getattr(bl.model, key), key
    for key in ("num_frames", "input_size", "sampling_rate"):
        assert getattr(pt.data, key) == getattr(ft.data, key) == getattr(ev.data, key), key
    assert pt.model.patch_size == 8 and pt.model.normalize_target is False
    # Same budget and recipe for both inits; only the weights differ.
    assert bl.model.init == "random" and ft.model.init == s["pretrain"].output
    differs = ("run.", "tracking.", "model.init")
    recipe = {k: v for k, v in stable_config(ft).items() if not k.startswith(differs)}
    assert recipe == {k: v for k, v in stable_config(bl).items() if not k.startswith(differs)}


def test_the_shipped_progressive_pipeline_chains_one_architecture(tmp_path: Path) -> None:
    """pipeline/progressive.toml: the post-pre-training trains the pre-trained architecture on the two
    hybrid shard sets at the demo's clip, and fine-tuning starts from it."""
    cfg = load_config(PipelineConfig, REPO / "jobs/configs/pipeline/progressive.toml", [f"pipeline.output={tmp_path}"])
    s = {x.name: x for x in plan_stages(cfg, JOBS, URI)}
    pt, pp, ft = s["pretrain"].cfg, s["postpretrain"].cfg, s["finetune"].cfg
    assert s["postpretrain"].selected and pp.model.init == s["pretrain"].output and ft.model.init == s["postpretrain"].output
    assert pp.data.sources == ("data/shards/motion_a", "data/shards/motion_b")
    assert pp.data.exclude_shards == (s["shard"].output,) and pp.finetune.val_split == ""
    for key in ("name", "patch_size", "num_frames", "img_size"):
        assert getattr(pt.model, key) == getattr(pp.model, key) == getattr(ft.model, key), key
    for key in ("num_frames", "input_size", "sampling_rate"):
        assert getattr(pt.data, key) == getattr(pp.data, key) == getattr(ft.data, key), key
    for name in ("motion_a", "motion_b"):  # the datasets the Makefile's demo-progressive builds
        load_config(DatasetJobConfig, REPO / f"jobs/configs/dataset/{name}.toml")


def test_bad_keys_and_stages_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'pretrain.train.stepz'.*valid keys: steps"):
        _cfg(tmp_path, "pretrain.train.stepz=3")
    with pytest.raises(ConfigError, match="expected int"):
        _cfg(tmp_path, "pretrain.train.steps=many")
    with pytest.raises(ConfigError, match="unknown stage 'train'"):
        _cfg(tmp_path, 'pipeline.stages=["shard", "train"]')
    with pytest.raises(ConfigError, match="pretrain.config: config not found: pretrain/nope"):
        _stages(tmp_path, "pretrain.config=pretrain/nope")


def test_wiring_links_each_stage_to_the_previous_one(tmp_path: Path) -> None:
    s = _stages(tmp_path, "pretrain.train.steps=7", "baseline.train.steps=3")
    root = str(tmp_path / "runs" / "demo")
    shards = "data/shards/synthetic"  # the pipeline file names it (where the stand-alone demo configs look)
    assert s["shard"].cfg.shard.output == shards and s["shard"].cfg.shard.manifest == "data/synthetic/manifest.csv"
    pt, ft, ev, bl = s["pretrain"].cfg, s["finetune"].cfg, s["evaluate"].cfg, s["baseline"].cfg
    assert (pt.run.output, pt.run.name, pt.data.shards) == (root, "pretrain", shards)
    assert pt.train.steps == 7 and pt.train.checkpoint_every == 30  # the given key on top of the base file's
    assert ft.model.init == s["pretrain"].output == f"{root}/pretrain" and ft.data.shards == shards
    assert ft.optim.layer_decay == 0.75  # the fine-tune recipe of finetune/demo.toml
    assert ev.model.init == s["finetune"].output and ev.run.output == f"{root}/evaluate" and ev.data.shards == shards
    assert bl.model.init == "random" and bl.tracking.registered_model == "" and bl.train.steps == 3
    assert bl.optim.layer_decay == 0.75 and s["baseline"].output == f"{root}/baseline"
    for stage in (pt, ft, ev, bl):
        assert stage.tracking.tracking_uri == URI and stage.tracking.experiment == "tubelet"
    assert [x.name for x in s.values() if not x.selected] == ["postpretrain"]  # demo: baseline on, and evaluated
    # The baseline is evaluated as the fine-tuned model is: the same split and views, its own model.
    bev = s["baseline_evaluate"].cfg
    assert bev.model.init == s["baseline"].output and bev.run.output == f"{root}/baseline_evaluate"
    assert (bev.data.split, bev.data.test_num_clips, bev.data.test_num_crops, bev.data.shards) == (
        ev.data.split, ev.data.test_num_clips, ev.data.test_num_crops, shards) and ev.data.split == "test"
    assert s["baseline_evaluate"].needs == ("shard", "baseline")


def test_progressive_training_puts_post_pre_training_between_pretrain_and_finetune(tmp_path: Path) -> None:
    """pipeline.stages with postpretrain: it starts from the pre-trained encoder, trains on the
    labelled hybrid (data.sources) without validation, never on the target's held-out videos
    (data.exclude_shards = the pipeline's shards), is not registered; fine-tuning starts from it."""
    root = str(tmp_path / "runs" / "demo")
    on = 'pipeline.stages=["shard", "pretrain", "postpretrain", "finetune", "evaluate"]'
    s = _stages(tmp_path, on, 'postpretrain.data.sources=["/d/k400", "/d/k600"]', "postpretrain.train.steps=5")
    pp, ft = s["postpretrain"].cfg, s["finetune"].cfg
    assert s["postpretrain"].selected and s["postpretrain"].output == f"{root}/postpretrain"
    assert pp.model.init == s["pretrain"].output and pp.data.sources == ("/d/k400", "/d/k600")
    assert pp.data.exclude_shards == ("data/shards/synthetic",) and pp.data.exclude_splits == "val+test"
    assert pp.finetune.val_split == "" and pp.tracking.registered_model == "" and pp.train.steps == 5
    assert pp.model.init_head == "auto" and ft.model.init_head == "auto"
    assert ft.model.init == s["postpretrain"].output and s["finetune"].needs == ("shard", "postpretrain")
    assert s["postpretrain"].needs == ("shard", "pretrain")
    assert _stages(tmp_path)["finetune"].cfg.model.init == s["pretrain"].output  # without it, from pre-training
    with pytest.raises(ConfigError, match=r"^postpretrain\.data\.sources is empty: name the labelled shard sets") as err:
        _stages(tmp_path, on)
    assert "\n" not in str(err.value)


def test_a_given_key_wins_over_the_wiring_and_the_chain_follows(tmp_path: Path) -> None:
    s = _stages(tmp_path, "shard.output=/data/shards", "pretrain.run.name=long", 'pipeline.stages=["pretrain"]',
                "pipeline.baseline=false")
    assert s["pretrain"].cfg.data.shards == "/data/shards" and s["finetune"].cfg.data.shards == "/data/shards"
    assert s["finetune"].cfg.model.init.endswith("/demo/long")
    assert [x.name for x in s.values() if x.selected] == ["pretrain"]
    assert not _stages(tmp_path, 'pipeline.stages=["shard", "pretrain", "finetune"]')["baseline_evaluate"].selected


def test_fingerprints_ignore_how_a_stage_runs_but_not_what_it_makes(tmp_path: Path) -> None:
    base = _stages(tmp_path)["pretrain"]
    volatile = _stages(tmp_path, "pretrain.train.fail_at_step=3", "pretrain.scaling.num_workers=1",
                       "pretrain.tracking.system_metrics=false", "pretrain.train.log_every=1")["pretrain"]
    changed = _stages(tmp_path, "pretrain.optim.blr=1e-3")["pretrain"]
    fp = fingerprint(base, {"shard": "a"})
    assert fingerprint(volatile, {"shard": "a"}) == fp
    assert fingerprint(changed, {"shard": "a"}) != fp and fingerprint(base, {"shard": "b"}) != fp
    assert changed_keys(stable_config(base.cfg), stable_config(changed.cfg)) == "optim.blr: 0.003 -> 0.001"


def _checkpoint(run_dir: Path, step: int, world: int = 2, stamp: str = "") -> Path:
    """The files :func:`pipeline.train.checkpoint.is_complete` looks for."""
    ckpt = run_dir / f"checkpoint_2026-01-01_00-00-{stamp or step:0>2}"
    (ckpt / "ds").mkdir(parents=True)
    (ckpt / "ds" / "latest").write_text(f"step{step:08d}")
    (ckpt / "rng").mkdir()
    for r in range(world):
        (ckpt / "rng" / f"rank{r}.pt").write_bytes(b"x")
    (ckpt / "loop.json").write_text(json.dumps({"step": step, "world_size": world, "tag": f"step{step:08d}"}))
    return ckpt


def test_pretrain_is_complete_with_its_final_checkpoint_and_export(tmp_path: Path) -> None:
    stage = _stages(tmp_path, "pretrain.train.steps=8")["pretrain"]
    run_dir = Path(stage.output)
    assert not check_pretrain(stage).complete and "starts at step 0" in check_pretrain(stage).reason
    _checkpoint(run_dir, 4)
    partial = _checkpoint(run_dir, 6)
    (partial / "rng" / "rank1.pt").unlink()  # a checkpoint cut short by a kill is not a resume point
    found = check_pretrain(stage)
    assert not found.complete and "resumes from its checkpoint at step 4/8" in found.reason
    _checkpoint(run_dir, 8)
    found = check_pretrain(stage)
    assert not found.complete and found.finish is not None and "no export/pretrain_fp32.pt" in found.reason
    (run_dir / "export").mkdir()
    for name in EXPORTS:
        (run_dir / "export" / name).write_bytes(b"w")
    found = check_pretrain(stage)
    assert found.complete and found.finish is None and "step 8/8" in found.reason


def _card(folder: Path, step: int, top1: float = 0.5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes(b"w")
    (folder / "model.json").write_text(json.dumps({"model": {}, "class_names": [], "metrics": {"val_top1": top1},
                                                   "source": {"step": step}}))


def test_finetune_is_complete_with_last_weights_at_the_final_step(tmp_path: Path) -> None:
    stage = _stages(tmp_path, "finetune.train.steps=6", "finetune.tracking.registered_model=")["finetune"]
    export = Path(stage.output) / "export"
    _checkpoint(Path(stage.output), 3)
    assert "resumes from its checkpoint at step 3/6" in check_finetune(stage).reason
    _card(export / "best", 3, 0.75)
    _card(export / "last", 3)
    assert not check_finetune(stage).complete
    _card(export / "last", 6)
    found = check_finetune(stage)
    assert found.complete and "kept best (val top-1 0.750)" in found.reason


def test_evaluate_is_complete_only_for_the_model_it_evaluated(tmp_path: Path) -> None:
    stage = _stages(tmp_path)["evaluate"]
    cfg, out = stage.cfg, Path(stage.cfg.run.output)
    assert check_evaluate(stage).reason == "no report.json yet"
    out.mkdir(parents=True)
    # jobs.evaluate records absolute local paths (its Ray workers run elsewhere)
    report = {"top1": 0.5, "top5": 1.0, "per_class": {}, "model": os.path.abspath(cfg.model.init),
              "shards": os.path.abspath(cfg.data.shards),
              "split": "test", "num_clips": 2, "num_crops": 3}
    (out / "report.json").write_text(json.dumps({**report, "model": "/elsewhere"}))
    assert "report.json has model '/elsewhere'" in check_evaluate(stage).reason
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "per_class"}))
    assert check_evaluate(stage).reason == "report.json lacks per_class"
    (out / "report.json").write_text(json.dumps(report))
    assert check_evaluate(stage).complete
    _card(Path(cfg.model.init) / "export" / "best", 60)  # the model changed after the report
    future = time.time() + 60
    os.utime(Path(cfg.model.init) / "export" / "best" / "model.pt", (future, future))
    assert check_evaluate(stage).reason == "the model's weights are newer than report.json"


def test_state_file_round_trip_and_ui_command(tmp_path: Path) -> None:
    assert load_state(str(tmp_path)) == {"version": 1, "stages": {}}
    save_state(str(tmp_path), {"version": 1, "stages": {"shard": {"run_id": "abc"}}, "parent_run_id": "p"})
    assert load_state(str(tmp_path))["stages"]["shard"]["run_id"] == "abc"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # written by rename
    (tmp_path / "pipeline_state.json").write_text("{not json")
    assert load_state(str(tmp_path)) == {"version": 1, "stages": {}}  # unreadable: start over, never crash
    cmd = mlflow_ui_command("sqlite:////x/runs/mlflow.db")
    assert cmd.endswith("mlflow ui --backend-store-uri sqlite:////x/runs/mlflow.db --host 127.0.0.1 --port 5000")
    assert mlflow_ui_command("http://u:p@host:5000") == "open http://***@host:5000"
    assert issubclass(StageError, Exception)


def test_a_stage_logs_into_the_child_run_made_for_it(tmp_path: Path) -> None:
    """What the pipeline relies on in pipeline.infra.tracking: ``tracking.run_id`` attaches to a run made
    beforehand; its first start logs the params, a resumed start only sets RUNNING and the tags."""
    from mlflow import MlflowClient

    from pipeline.infra.tracking import MlflowTracker, TrackingConfig, child_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = TrackingConfig(tracking_uri=uri, experiment="unit", system_metrics=False)
    parent = MlflowTracker(base).start("pipeline")
    child = MlflowTracker(child_config(base, parent.run_id or "", "pretrain")).start("pretrain", tags={"stage": "pretrain"})
    child_id = child.run_id or ""
    stage_cfg = _stages(tmp_path)["pretrain"].cfg
    stage_cfg.tracking = child_config(base, parent.run_id or "", "pretrain", child_id)
    with MlflowTracker(stage_cfg.tracking).start(config=stage_cfg, tags={"world_size": 2}) as first:
        first.log_metrics({"loss": 1.0}, 1)
    stage_cfg.train.steps = 99  # a resumed launch never rewrites params (MLflow refuses changed values)
    with MlflowTracker(stage_cfg.tracking).start(config=stage_cfg, tags={"world_size": 1}) as again:
        again.log_metrics({"loss": 0.5}, 2)
    run = MlflowClient(uri).get_run(child_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.steps"] == "60" and run.data.tags["world_size"] == "1"
    assert [m.step for m in MlflowClient(uri).get_metric_history(child_id, "loss")] == [1, 2]
    assert len(MlflowClient(uri).search_runs([run.info.experiment_id])) == 2


def test_evaluate_accepts_the_model_folder_its_driver_resolved(tmp_path: Path) -> None:
    """jobs.evaluate resolves a fine-tuning run folder to its model folder (export/best) on the
    driver and reports that; the pipeline must recognise it as the same model (a rerun would
    otherwise refuse a finished evaluation)."""
    stage = _stages(tmp_path)["evaluate"]
    cfg, out = stage.cfg, Path(stage.cfg.run.output)
    best = Path(cfg.model.init).absolute() / "export" / "best"
    _card(best, 60)
    out.mkdir(parents=True)
    report = {"top1": 0.5, "top5": 1.0, "per_class": {}, "model": str(best),
              "shards": os.path.abspath(cfg.data.shards), "split": "test", "num_clips": 2, "num_crops": 3}
    future = time.time() + 120
    (out / "report.json").write_text(json.dumps(report))
    os.utime(out / "report.json", (future, future))
    assert check_evaluate(stage).complete, check_evaluate(stage).reason
    (out / "report.json").write_text(json.dumps({**report, "model": str(best.parent / "last")}))
    assert "report.json has model" in check_evaluate(stage).reason


def _fake_pretrain(cfg: Any) -> None:
    """What jobs.pretrain leaves: the final checkpoint and the exports."""
    run_dir = Path(cfg.run.output) / cfg.run.name
    _checkpoint(run_dir, cfg.train.steps, stamp="59")
    (run_dir / "export").mkdir(exist_ok=True)
    for name in EXPORTS:
        (run_dir / "export" / name).write_bytes(b"w")


def test_the_summary_says_what_each_stage_did_in_words_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A stage that ran says done (or resumed, and from where) and what its outputs hold now, never
    the check made before it ran ("no checkpoint yet: starts at step 0"); a rerun says skipped."""
    monkeypatch.setattr(Runner, "_ensure_ray", lambda self: None)  # the fake job needs no Ray
    jobs = dataclasses.replace(JOBS, pretrain=StageJob(JOBS.pretrain.config, _fake_pretrain))
    given = ['pipeline.stages=["pretrain"]', "pipeline.baseline=false", "pretrain.train.steps=8",
             f"pipeline.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]

    def pretrain_line(*more: str) -> tuple[dict[str, Any], str]:
        summary = run_pipeline(_cfg(tmp_path, *given, *more), jobs)
        pages.append(summary["mlflow"]["page"])
        line = next(x for x in format_summary(summary).splitlines() if x.strip().startswith("pretrain "))
        assert f"then open {pages[-1]}" in format_summary(summary)
        return next(o for o in summary["stages"] if o["stage"] == "pretrain"), line

    pages: list[str] = []
    done, line = pretrain_line()
    # the link printed opens the experiment in the UI's model-training view, not the GenAI one
    assert pages[0].startswith("http://127.0.0.1:5000/#/experiments/")
    assert pages[0].endswith("/runs?workflowType=machine_learning&compareRunsMode=CHART")
    assert done["outcome"] == "done" and done["reason"].startswith("final checkpoint at step 8/8; export/ has")
    assert "starts at step 0" not in line and line.split()[1] == "done", line
    skipped, line = pretrain_line()
    assert skipped["outcome"] == "skipped" and skipped["reason"].startswith("already done: final checkpoint at step 8/8")
    # An interrupted run (its checkpoint at step 4) is resumed, and the line says from where.
    _checkpoint(tmp_path / "runs" / "other" / "pretrain", 4)
    resumed, line = pretrain_line("pipeline.name=other")
    assert resumed["outcome"] == "resumed" and line.split()[1] == "resumed", line
    assert resumed["reason"].startswith("from its checkpoint at step 4/8; final checkpoint at step 8/8"), resumed
    assert "resumes" not in resumed["reason"]


def test_outputs_made_before_a_key_existed_are_kept_when_it_holds_its_default(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that grows a key (data.crop_on) must not make every earlier pipeline refuse its own
    outputs: a recorded config that lacks only keys now at their defaults is the same config. A key
    the record lacks that is set to something else is still a change, and refused."""
    from pipeline.workflow.state import only_new_defaults

    assert only_new_defaults({"a": 1}, {"a": 1, "b": 2}, {"b": 2}) and only_new_defaults({"a": 1}, {"a": 1}, {})
    assert not only_new_defaults({"a": 1}, {"a": 1, "b": 3}, {"b": 2})  # a new key, not at its default
    assert not only_new_defaults({"a": 1, "b": 2}, {"a": 1}, {"b": 2})  # a key gone
    assert not only_new_defaults({"a": 1}, {"a": 2}, {"a": 2})  # a changed value, default or not

    monkeypatch.setattr(Runner, "_ensure_ray", lambda self: None)  # the fake job needs no Ray
    jobs = dataclasses.replace(JOBS, pretrain=StageJob(JOBS.pretrain.config, _fake_pretrain))
    given = ['pipeline.stages=["pretrain"]', "pipeline.baseline=false", "pretrain.train.steps=8",
             f"pipeline.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    run_pipeline(_cfg(tmp_path, *given), jobs)
    root = tmp_path / "runs" / "demo"
    state = load_state(str(root))
    rec = state["stages"]["pretrain"]
    del rec["config"]["data.crop_on"]  # as written before the key existed; its fingerprint was another one
    rec["fingerprint"] = "0123456789abcdef"
    save_state(str(root), state)
    outcome = next(o for o in run_pipeline(_cfg(tmp_path, *given), jobs)["stages"] if o["stage"] == "pretrain")
    assert outcome["outcome"] == "skipped", outcome
    assert load_state(str(root))["stages"]["pretrain"]["fingerprint"] == "0123456789abcdef"  # the chain unchanged
    with pytest.raises(StageError, match=r"holds outputs of another config or other inputs \(data\.crop_on: None -> 'device'"):
        run_pipeline(_cfg(tmp_path, *given, "pretrain.data.crop_on=device"), jobs)


def test_the_summary_compares_the_baseline_on_the_test_split_too(tmp_path: Path) -> None:
    """Fine-tuned and random-init models side by side: val top-1 (fine-tuning) and test top-1 (evaluation)."""
    cfg = _cfg(tmp_path, f"pipeline.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}")
    runner = Runner(cfg, JOBS)
    stages = {s.name: s for s in runner.stages}
    for name, val, test in (("finetune", 0.875, 0.925), ("baseline", 0.35, 0.3)):
        _card(Path(stages[name].output) / "export" / "best", 200, val)
        if name == "finetune":  # its card names the pre-trained weights it started from
            card = Path(stages[name].output) / "export" / "best" / "model.json"
            card.write_text(json.dumps({**json.loads(card.read_text()), "source": {"step": 200, "init": "pt"}}))
        report = Path(stages["evaluate" if name == "finetune" else "baseline_evaluate"].output) / "report.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"split": "test", "top1": test, "top5": 1.0, "num_videos": 40,
                                      "views_per_video": 6}))
    summary = summarize(runner, "FINISHED")
    assert summary["baseline"]["test_top1"] == 0.3 and summary["metrics"]["baseline_test_top1"] == 0.3
    assert summary["finetune"]["test_top1"] == 0.925 and summary["metrics"]["test_top1"] == 0.925
    text = format_summary(summary)
    assert "fine-tune  val top-1 0.875  test top-1 0.925 (from pre-training)" in text, text
    assert "baseline   val top-1 0.350  test top-1 0.300 (from random init)" in text, text


def test_printed_metrics_keep_small_numbers() -> None:
    """jobs.pretrain prints its final metrics: a final lr of 3.1e-06 is not 0.0."""
    assert rounded({"lr": 3.1234e-06, "loss": 0.912345, "step": 8}) == {"lr": 3.123e-06, "loss": 0.9123, "step": 8}
