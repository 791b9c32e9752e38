"""What each stage job's outputs must be, and how the runner treats them: :class:`StageKind`.

The runner is the same for every stage; what differs between the jobs is here, one class each:

- how its outputs are checked (:class:`Check`: complete or not, why, a last step that would
  finish them without a relaunch, e.g. an export or a registration);
- what its outputs are a function of (:meth:`StageKind.fingerprint`): a training stage's
  stable config and upstream outputs; shards their own bytes, whatever config made them;
- what happens to stale outputs: a checkpointed stage is never resumed or kept silently, a
  report is simply made again;
- what the runner logs for a job that logs nothing to MLflow itself (the shard job).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pipeline.core import io as sio
from pipeline.data.shard_writer import INDEX_NAME
from pipeline.infra.tracking import is_registered
from pipeline.train.checkpoint import LOOP_FILE, latest_checkpoint
from pipeline.train.model_registry import CARD, WEIGHTS, model_folder, register_model, registered_uri
from pipeline.workflow.pipeline_config import Stage
from pipeline.workflow.state import fingerprint, read_json

if TYPE_CHECKING:
    from pipeline.workflow.runs import Runs

EXPORTS = ("pretrain_fp32.pt", "encoder_fp32.pt", "videomae_official.pt")
REPORT_KEYS = ("top1", "top5", "per_class")


@dataclass
class Check:
    """What a stage's outputs say: complete or not, why, and what would finish it without a rerun."""

    complete: bool
    reason: str
    finish: Callable[[], None] | None = None  # a last step (export, registration) instead of a relaunch
    identity: str = ""  # a digest of the outputs themselves (shards)
    resumes: str = ""  # what a launch continues from ("its checkpoint at step 3/6"); '' = starts afresh


def _checkpoint_step(run_dir: str) -> int | None:
    ckpt = latest_checkpoint(run_dir)
    return None if ckpt is None else int(read_json(sio.join(ckpt, LOOP_FILE))["step"])


# --------------------------------------------------------------------------------------------
# Completion checks


def check_shard(stage: Stage) -> Check:
    """Complete when every planned shard was committed and still verifies (``shard.verify``), and
    index.json describes exactly those shards for this manifest and these settings."""
    from pipeline.orchestration.sharding import prepare, published_shards

    cfg = stage.cfg.shard
    prepared = prepare(cfg)  # reads the manifest and plans the shards; no video is touched
    try:
        plan = prepared.plan
        kept, missing = published_shards(cfg, prepared)
        index = read_json(sio.join(cfg.output, INDEX_NAME))
        resumes = f"{len(kept)} shards kept" if kept else ""
        if index is None:
            return Check(False, f"{missing} of {len(kept) + missing} shards to write ({plan.inputs} inputs)",
                         resumes=resumes)
        listed = sorted(s["name"] for s in index.get("shards", []))
        if missing or index.get("fingerprint") != prepared.fingerprint or listed != sorted(
                s.name for s in kept if s.samples) or index.get("totals", {}).get("inputs") != plan.inputs:
            return Check(False, f"{missing} shards not committed or not verified, or the index is stale",
                         resumes=resumes)
        identity = hashlib.sha256(json.dumps([prepared.fingerprint, plan.labels,
                                              sorted((s.name, s.sha256) for s in kept)]).encode()).hexdigest()[:16]
        totals = index["totals"]
        return Check(True, f"{len(kept)} shards verified ({cfg.verify}); inputs {plan.inputs} = videos "
                           f"{totals.get('videos', totals['samples'])} + quarantined {totals['quarantined']}",
                     identity=identity)
    finally:
        prepared.close()


def check_pretrain(stage: Stage) -> Check:
    """Complete when the newest complete checkpoint is at ``train.steps`` and export/ holds the weights."""
    cfg, run_dir = stage.cfg, stage.output
    step = _checkpoint_step(run_dir)
    if step is None:
        return Check(False, "no checkpoint yet: starts at step 0")
    if step < cfg.train.steps:
        return Check(False, f"interrupted: resumes from its checkpoint at step {step}/{cfg.train.steps}",
                     resumes=f"its checkpoint at step {step}/{cfg.train.steps}")
    export = sio.join(run_dir, "export")
    missing = [f for f in EXPORTS if not sio.exists(sio.join(export, f))] if cfg.train.export else []
    if not missing:
        return Check(True, f"final checkpoint at step {step}/{cfg.train.steps}"
                           + (f"; export/ has {', '.join(EXPORTS)}" if cfg.train.export else ""))
    ckpt = latest_checkpoint(run_dir)
    if sio.is_remote(ckpt):
        return Check(False, f"final checkpoint at step {step} but no export/{missing[0]}: relaunching to export")

    def export() -> None:
        from pipeline.train.export import export_weights

        export_weights(ckpt, cfg.model, export, cfg.data, {"run": cfg.run.name, "steps": cfg.train.steps})

    return Check(False, f"final checkpoint at step {step} but no export/{missing[0]}: exporting it", finish=export)


def check_finetune(stage: Stage, run_id: str = "") -> Check:
    """Complete when export/last is at ``train.steps``, the kept folder (best/last) has weights, and
    the kept model is registered (when ``tracking.registered_model`` is set)."""
    cfg, run_dir = stage.cfg, stage.output
    export = sio.join(run_dir, "export")
    last = read_json(sio.join(export, "last", CARD))
    if last is None or int(last["source"]["step"]) < cfg.train.steps:
        step = _checkpoint_step(run_dir)
        if step is None:
            return Check(False, "no checkpoint yet: starts at step 0")
        return Check(False, f"interrupted: resumes from its checkpoint at step {step}/{cfg.train.steps}",
                     resumes=f"its checkpoint at step {step}/{cfg.train.steps}")
    best = sio.join(export, "best")
    kept = best if cfg.finetune.keep == "best" and sio.exists(sio.join(best, CARD)) else sio.join(export, "last")
    if not sio.exists(sio.join(kept, WEIGHTS)):
        return Check(False, f"no {WEIGHTS} in {kept}: relaunching to write it")
    card = read_json(sio.join(kept, CARD))
    top1 = card.get("metrics", {}).get("val_top1")
    reason = f"trained {cfg.train.steps} steps; kept {kept.rsplit('/', 1)[-1]}" + (
        f" (val top-1 {top1:.3f})" if top1 is not None else "")
    name, alias = cfg.tracking.registered_model, cfg.finetune.registered_alias
    if name and run_id and not is_registered(cfg.tracking.tracking_uri, name, run_id):
        def register() -> None:  # the alias moves per finetune.promote, as in jobs.finetune
            from pipeline.train.finetune import validation_data

            print(register_model(cfg.tracking.tracking_uri, run_id, name, alias, kept, cfg.finetune.promote,
                                 validation_data(cfg)).message)

        return Check(False, f"{reason}; not registered as {name} yet: registering", finish=register)
    if name and run_id:
        reason += f"; registered as {registered_uri(cfg.tracking.tracking_uri, name, alias, run_id)}"
    return Check(True, reason)



def check_evaluate(stage: Stage) -> Check:
    """Complete when report.json has the metrics and was made from this model, these shards and views,
    after the model's weights were last written."""
    cfg = stage.cfg
    report_uri = sio.join(cfg.run.output, "report.json")
    report = read_json(report_uri)
    if report is None:
        return Check(False, "no report.json yet")
    lacking = [k for k in REPORT_KEYS if k not in report]
    if lacking:
        return Check(False, f"report.json lacks {', '.join(lacking)}")
    if report.get("model") not in _model_names(cfg.model.init):
        return Check(False, f"report.json has model {report.get('model')!r}, this run wants {_abs(cfg.model.init)!r}")
    want = {"shards": _abs(cfg.data.shards), "split": cfg.data.split,
            "num_clips": cfg.data.test_num_clips, "num_crops": cfg.data.test_num_crops}
    for key, value in want.items():
        if report.get(key) != value:
            return Check(False, f"report.json has {key} {report.get(key)!r}, this run wants {value!r}")
    weights = [os.path.join(cfg.model.init, "export", w, WEIGHTS) for w in ("best", "last")]
    newest = max((os.path.getmtime(w) for w in weights if os.path.exists(w)), default=0.0)
    if not sio.is_remote(report_uri) and os.path.getmtime(report_uri) < newest:
        return Check(False, "the model's weights are newer than report.json")
    return Check(True, f"report.json of this model on {cfg.data.split}: top-1 {report['top1']:.3f}")


def _model_names(spec: str) -> set[str]:
    """The names a report may give the model of ``spec``: as given (absolute), and, for a local
    fine-tuning run folder, the model folder jobs.evaluate resolves it to on its driver."""
    names = {_abs(spec)}
    if spec and not sio.is_remote(spec) and not spec.startswith(("models:/", "runs:/")):
        folder = model_folder(_abs(spec))
        if folder:
            names.add(folder)
    return names


def _abs(path: str) -> str:
    return path if not path or sio.is_remote(path) or path.startswith("models:/") else os.path.abspath(path)


# --------------------------------------------------------------------------------------------
# The stage kinds


class StageKind:
    """What the runner needs to know about one stage job; the base is a training job's answer."""

    judged_by_outputs = False  # identified by their own bytes (Check.identity), never stale
    remade_when_stale = False  # stale outputs are simply made again (a report), never refused

    def check(self, stage: Stage, run_id: str) -> Check:
        raise NotImplementedError

    def fingerprint(self, stage: Stage, upstream: dict[str, str], found: Check) -> str:
        """What the stage's outputs are a function of ('' while that is not known yet)."""
        return fingerprint(stage, upstream)

    def after_run(self, stage: Stage, cfg: Any, runs: Runs, run_id: str, parent_id: str) -> None:
        """Log into the stage's run what the job (run with ``cfg``) did not log itself."""


class ShardKind(StageKind):
    judged_by_outputs = True

    def check(self, stage: Stage, run_id: str) -> Check:
        return check_shard(stage)

    def fingerprint(self, stage: Stage, upstream: dict[str, str], found: Check) -> str:
        return fingerprint(stage, upstream, found.identity) if found.identity else ""

    def after_run(self, stage: Stage, cfg: Any, runs: Runs, run_id: str, parent_id: str) -> None:
        """The shard job logs nothing itself: its run gets the config, the counts and index.json."""
        index = read_json(sio.join(cfg.shard.output, INDEX_NAME)) or {}
        totals = index.get("totals", {})
        metrics = {k: totals.get(k) for k in ("inputs", "samples", "quarantined", "shards", "bytes")}
        for split, d in totals.get("by_split", {}).items():
            metrics.update({f"{split}_samples": d["samples"], f"{split}_quarantined": d["quarantined"]})
        runs.log_into(run_id, parent_id, cfg, stage.name, metrics, {"index.json": index}, {"shards": cfg.shard.output})


class PretrainKind(StageKind):
    def check(self, stage: Stage, run_id: str) -> Check:
        return check_pretrain(stage)


class FinetuneKind(StageKind):
    def check(self, stage: Stage, run_id: str) -> Check:
        return check_finetune(stage, run_id)


class EvaluateKind(StageKind):
    remade_when_stale = True

    def check(self, stage: Stage, run_id: str) -> Check:
        return check_evaluate(stage)


KINDS: dict[str, StageKind] = {"shard": ShardKind(), "pretrain": PretrainKind(), "finetune": FinetuneKind(),
                               "evaluate": EvaluateKind()}


def kind_of(stage: Stage) -> StageKind:
    """The kind of a stage's job (the baseline is a fine-tune)."""
    return KINDS[stage.job]


def check(stage: Stage, run_id: str = "") -> Check:
    return kind_of(stage).check(stage, run_id)


__all__ = ["Check", "EXPORTS", "KINDS", "StageKind", "check", "check_evaluate", "check_finetune", "check_pretrain",
           "check_shard", "kind_of"]
