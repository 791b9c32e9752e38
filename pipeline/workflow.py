"""One pipeline run: shard -> pre-train -> fine-tune -> evaluate (+ a random-init baseline), resumable.

``run_pipeline(cfg, jobs)`` walks the stages in order. For each it first checks the stage's
outputs (the shard job's own verification; a final checkpoint + export; best/last weights +
registration; a report of this very model) and skips it when they are complete and were made
from the same config and the same upstream outputs. Otherwise the stage job's ``run(cfg)`` is
called in this process, inside one Ray session: an interrupted stage continues by itself (the
training jobs resume from their newest complete checkpoint, the shard job keeps its verified
prefix).

MLflow: one parent run per pipeline and a child run per stage (``mlflow.parentRunId``). The ids
live in ``<root>/pipeline_state.json`` (written atomically after every change), so a rerun
continues the same parent run, and a stage that did not finish logs into its own earlier child
run. The parent records, per invocation, which stages ran or were skipped and why, and the summary.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from pipeline import io as sio
from pipeline.data.shard_writer import INDEX_NAME, QUARANTINE_NAME
from pipeline.errors import TubeletError
from pipeline.registry import CARD, WEIGHTS
from pipeline.tracking import MlflowTracker, TrackingConfig, child_config, redact_url, resolve_uri
from pipeline.train.checkpoint import LOOP_FILE, latest_checkpoint
from pipeline.config import to_dict, to_toml
from pipeline.workflow_config import STAGES, Jobs, PipelineConfig, Stage, given, pipeline_root, plan_stages, stable_config

log = logging.getLogger(__name__)

STATE_FILE = "pipeline_state.json"
EXPORTS = ("pretrain_fp32.pt", "encoder_fp32.pt", "videomae_official.pt")
REPORT_KEYS = ("top1", "top5", "per_class")


class StageError(TubeletError):
    """A stage failed or cannot continue; one line, saying what to do."""


@dataclass
class Check:
    """What a stage's outputs say: complete or not, why, and what would finish it without a rerun."""

    complete: bool
    reason: str
    finish: Callable[[], None] | None = None  # a last step (export, registration) instead of a relaunch
    identity: str = ""  # a digest of the outputs themselves (shards)


# --------------------------------------------------------------------------------------------
# Completion checks


def _json(uri: str) -> Any:
    try:
        return json.loads(sio.read_text(uri))
    except (FileNotFoundError, ValueError, TubeletError):
        return None


def _checkpoint_step(run_dir: str) -> int | None:
    ckpt = latest_checkpoint(run_dir)
    return None if ckpt is None else int(_json(sio.join(ckpt, LOOP_FILE))["step"])


def check_shard(stage: Stage) -> Check:
    """Complete when every manifest row is in a shard that verifies or in quarantine.jsonl, and
    index.json describes exactly those shards (the shard job's own resume logic decides)."""
    from pipeline.sharding import prepare

    cfg = stage.cfg.shard
    plan = prepare(cfg)  # reads the manifest, verifies existing shards (shard.verify: sha256 | size)
    index = _json(sio.join(cfg.output, INDEX_NAME))
    inputs = len(plan.items) + len(plan.rejects)
    if index is None:
        return Check(False, f"{len(plan.todo)} of {inputs} inputs to shard ({len(plan.kept)} shards kept)")
    quarantine = sio.read_text(sio.join(cfg.output, QUARANTINE_NAME)) if sio.exists(
        sio.join(cfg.output, QUARANTINE_NAME)) else ""
    quarantined = {(q["line"], q["uri"]) for q in map(json.loads, quarantine.splitlines())}
    # Rows quarantined after a split's last shard are in no shard state, only in quarantine.jsonl.
    missing = [it for it in plan.todo if (it.line, it.entry.uri) not in quarantined]
    listed = sorted(s["name"] for s in index.get("shards", []))
    if missing or index.get("fingerprint") != plan.fingerprint or listed != sorted(s.name for s in plan.kept) \
            or index.get("totals", {}).get("inputs") != inputs:
        return Check(False, f"{len(missing)} of {inputs} inputs not in verified shards or the index is stale")
    identity = hashlib.sha256(json.dumps([plan.fingerprint, plan.labels, [(s.name, s.sha256) for s in plan.kept]],
                                         sort_keys=True).encode()).hexdigest()[:16]
    totals = index["totals"]
    return Check(True, f"{len(plan.kept)} shards verified ({cfg.verify}); inputs {inputs} = samples "
                       f"{totals['samples']} + quarantined {totals['quarantined']}", identity=identity)


def check_pretrain(stage: Stage) -> Check:
    """Complete when the newest complete checkpoint is at ``train.steps`` and export/ holds the weights."""
    cfg, run_dir = stage.cfg, stage.output
    step = _checkpoint_step(run_dir)
    if step is None:
        return Check(False, "no checkpoint yet: starts at step 0")
    if step < cfg.train.steps:
        return Check(False, f"interrupted: resumes from its checkpoint at step {step}/{cfg.train.steps}")
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

        export_weights(ckpt, cfg.model, export)

    return Check(False, f"final checkpoint at step {step} but no export/{missing[0]}: exporting it", finish=export)


def check_finetune(stage: Stage, run_id: str = "") -> Check:
    """Complete when export/last is at ``train.steps``, the kept folder (best/last) has weights, and
    the kept model is registered (when ``tracking.registered_model`` is set)."""
    cfg, run_dir = stage.cfg, stage.output
    export = sio.join(run_dir, "export")
    last = _json(sio.join(export, "last", CARD))
    if last is None or int(last["source"]["step"]) < cfg.train.steps:
        step = _checkpoint_step(run_dir)
        if step is None:
            return Check(False, "no checkpoint yet: starts at step 0")
        return Check(False, f"interrupted: resumes from its checkpoint at step {step}/{cfg.train.steps}")
    best = sio.join(export, "best")
    kept = best if cfg.finetune.keep == "best" and sio.exists(sio.join(best, CARD)) else sio.join(export, "last")
    if not sio.exists(sio.join(kept, WEIGHTS)):
        return Check(False, f"no {WEIGHTS} in {kept}: relaunching to write it")
    card = _json(sio.join(kept, CARD))
    top1 = card.get("metrics", {}).get("val_top1")
    reason = f"trained {cfg.train.steps} steps; kept {kept.rsplit('/', 1)[-1]}" + (
        f" (val top-1 {top1:.3f})" if top1 is not None else "")
    name = cfg.tracking.registered_model
    if name and run_id and not _registered(cfg.tracking.tracking_uri, name, run_id):
        from pipeline.registry import register_model

        return Check(False, f"{reason}; not registered as {name} yet: registering",
                     finish=lambda: register_model(cfg.tracking.tracking_uri, run_id, name,
                                                   cfg.finetune.registered_alias, kept))
    return Check(True, reason + (f"; registered as {name}" if name and run_id else ""))


def _registered(uri: str, name: str, run_id: str) -> bool:
    from mlflow import MlflowClient

    try:
        return bool(MlflowClient(uri, registry_uri=uri).search_model_versions(f"name='{name}' and run_id='{run_id}'"))
    except Exception:  # noqa: BLE001 — no such registered model yet
        return False


def check_evaluate(stage: Stage) -> Check:
    """Complete when report.json has the metrics and was made from this model, these shards and views,
    after the model's weights were last written."""
    cfg = stage.cfg
    report_uri = sio.join(cfg.run.output, "report.json")
    report = _json(report_uri)
    if report is None:
        return Check(False, "no report.json yet")
    lacking = [k for k in REPORT_KEYS if k not in report]
    if lacking:
        return Check(False, f"report.json lacks {', '.join(lacking)}")
    want = {"model": _abs(cfg.model.init), "shards": _abs(cfg.data.shards), "split": cfg.data.split,
            "num_clips": cfg.data.test_num_clips, "num_crops": cfg.data.test_num_crops}
    for key, value in want.items():
        if report.get(key) != value:
            return Check(False, f"report.json has {key} {report.get(key)!r}, this run wants {value!r}")
    weights = [os.path.join(cfg.model.init, "export", w, WEIGHTS) for w in ("best", "last")]
    newest = max((os.path.getmtime(w) for w in weights if os.path.exists(w)), default=0.0)
    if not sio.is_remote(report_uri) and os.path.getmtime(report_uri) < newest:
        return Check(False, "the model's weights are newer than report.json")
    return Check(True, f"report.json of this model on {cfg.data.split}: top-1 {report['top1']:.3f}")


def _abs(path: str) -> str:
    return path if not path or sio.is_remote(path) or path.startswith("models:/") else os.path.abspath(path)


def check(stage: Stage, run_id: str = "") -> Check:
    if stage.job == "shard":
        return check_shard(stage)
    if stage.job == "pretrain":
        return check_pretrain(stage)
    if stage.job == "finetune":
        return check_finetune(stage, run_id)
    return check_evaluate(stage)


def fingerprint(stage: Stage, upstream: dict[str, str], identity: str = "") -> str:
    """What the stage's outputs are a function of: its stable config and its inputs' fingerprints.
    Shards are identified by their own bytes (``identity``), whatever config made them."""
    blob = identity or json.dumps([stable_config(stage.cfg), upstream], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else ""


# --------------------------------------------------------------------------------------------
# State file and MLflow runs


def load_state(root: str) -> dict[str, Any]:
    state = _json(sio.join(root, STATE_FILE))
    return state if isinstance(state, dict) and state.get("version") == 1 else {"version": 1, "stages": {}}


def save_state(root: str, state: dict[str, Any]) -> None:
    sio.write_text(sio.join(root, STATE_FILE), json.dumps(state, indent=1, sort_keys=True, default=str) + "\n")


def _live(client: Any, run_id: str | None) -> bool:
    """Is ``run_id`` a run of this store (not deleted)? Outputs may outlive a wiped MLflow database."""
    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 — MLflow raises its RestException for an unknown id
        return False


class Runs:
    """The parent run and the stage runs of one pipeline in one MLflow store."""

    def __init__(self, uri: str, experiment: str, name: str) -> None:
        from mlflow import MlflowClient

        self.uri, self.experiment, self.name = uri, experiment, name
        self.client = MlflowClient(uri)
        self.parent: MlflowTracker | None = None

    def _cfg(self, **kw: Any) -> TrackingConfig:
        return TrackingConfig(tracking_uri=self.uri, experiment=self.experiment, system_metrics=False, **kw)

    def open_parent(self, state: dict[str, Any], cfg: PipelineConfig) -> str:
        """Continue the pipeline's parent run (rerun) or create it; returns its id."""
        from pipeline.config import config_hash

        known = state.get("parent_run_id") if _live(self.client, state.get("parent_run_id")) else ""
        # Params: [pipeline] and only the stage keys the file or --set gave (the rest is the stage base files').
        params: dict[str, Any] = {"pipeline": to_dict(cfg.pipeline)}
        for name in STAGES:
            table = getattr(cfg, name)
            params[name] = {**({"config": table.config} if hasattr(table, "config") else {}), **given(table)}
        self.parent = MlflowTracker(self._cfg(run_id=known or "")).start(
            run_name=self.name, params=params, tags={"pipeline": self.name, "stage": "pipeline",
                                                     "config_hash": config_hash(cfg)})
        return self.parent.run_id or ""

    def child(self, stage: str, parent_id: str, earlier: dict[str, Any]) -> tuple[str, bool]:
        """The stage's run: its earlier one if that did not finish (a resumed stage), else a new child."""
        old = earlier.get("run_id")
        if old and earlier.get("status") != "finished" and _live(self.client, old):
            return old, True
        tracker = MlflowTracker(self._cfg(parent_run_id=parent_id)).start(
            run_name=stage, tags={"stage": stage, "pipeline": self.name})
        return tracker.run_id or "", False  # left RUNNING: the stage logs into it and ends it

    def end_child(self, run_id: str, status: str) -> None:
        """Close a stage run the stage left open (a killed worker cannot close its own)."""
        with contextlib.suppress(Exception):
            if self.client.get_run(run_id).info.status == "RUNNING" or status != "FINISHED":
                self.client.set_terminated(run_id, status)

    def loss_history(self, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
        try:
            return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, key))
        except Exception:  # noqa: BLE001
            return []


    def log_shard(self, run_id: str, parent_id: str, cfg: Any) -> None:
        """The shard job logs nothing itself: its child run gets the config, the counts and index.json."""
        tracker = MlflowTracker(self._cfg(run_id=run_id, parent_run_id=parent_id))
        with tracker.start(config=cfg, tags={"stage": "shard"}):
            index = _json(sio.join(cfg.shard.output, INDEX_NAME)) or {}
            totals = index.get("totals", {})
            metrics = {k: totals.get(k) for k in ("inputs", "samples", "quarantined", "shards", "bytes")}
            for split, d in totals.get("by_split", {}).items():
                metrics.update({f"{split}_samples": d["samples"], f"{split}_quarantined": d["quarantined"]})
            tracker.log_metrics(metrics, 0)
            tracker.log_dict(index, "index.json")
            tracker.set_tags({"shards": cfg.shard.output})


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class Outcome:
    stage: str
    outcome: str  # ran | skipped | completed (only a last step: export, registration) | failed | not selected
    reason: str
    seconds: float = 0.0
    run_id: str = ""


def compact_toml(cfg: PipelineConfig) -> str:
    """The pipeline config as given: stage tables without keys are left out."""
    blocks = [b for b in to_toml(cfg).split("\n\n") if b.strip() and len(b.strip().splitlines()) > 1]
    return "\n\n".join(b.strip() for b in blocks) + "\n"


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, TubeletError):
        return str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


class Runner:
    """Runs the stages of one pipeline in order; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, jobs: Jobs) -> None:
        self.cfg, self.jobs = cfg, jobs
        self.root = pipeline_root(cfg.pipeline)
        self.uri = resolve_uri(TrackingConfig(tracking_uri=cfg.pipeline.tracking_uri))
        self.stages = plan_stages(cfg, jobs, self.uri)  # config errors surface here, before anything starts
        self.state = load_state(self.root)
        self.runs = Runs(self.uri, cfg.pipeline.experiment, cfg.pipeline.name)
        self.fingerprints: dict[str, str] = {}
        self.outcomes: list[Outcome] = []
        self.parent_id = ""
        self._ray = contextlib.ExitStack()
        self._ray_on = False
        self._t0 = time.time()

    def save(self) -> None:
        save_state(self.root, self.state)

    def run(self) -> dict[str, Any]:
        sio.write_text(sio.join(self.root, "pipeline.toml"), compact_toml(self.cfg))
        self.parent_id = self.runs.open_parent(self.state, self.cfg)
        self.state.update(parent_run_id=self.parent_id, pipeline=self.cfg.pipeline.name, root=self.root,
                          tracking_uri=self.uri, experiment=self.cfg.pipeline.experiment,
                          invocations=int(self.state.get("invocations", 0)) + 1)
        self.save()
        try:
            with self._ray:
                for stage in self.stages:
                    try:
                        self.outcomes.append(self.stage(stage))
                    except StageError as exc:
                        self.outcomes.append(Outcome(stage.name, "failed", str(exc)))
                        raise
        except BaseException as exc:
            self.record("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        summary = self.record("FINISHED")
        return summary

    def stage(self, stage: Stage) -> Outcome:
        """Skip, finish or run one stage; returns what happened and why."""
        rec = self.state["stages"].setdefault(stage.name, {})
        if not stage.selected:
            self.fingerprints[stage.name] = rec.get("fingerprint", "")
            why = "pipeline.baseline is false" if stage.name == "baseline" else "not in pipeline.stages"
            return Outcome(stage.name, "not selected", why, run_id=rec.get("run_id", ""))
        upstream = {n: self.fingerprints.get(n, "") for n in stage.needs}
        try:
            found = check(stage, rec.get("run_id", ""))
        except TubeletError as exc:
            raise StageError(f"stage {stage.name}: {exc}") from None
        fp = fingerprint(stage, upstream, found.identity) if stage.job != "shard" or found.identity else ""
        same = rec.get("fingerprint") in (None, fp) or stage.job == "shard"  # shards: judged by their bytes
        if not same:
            self._refuse_stale(stage, rec, upstream, found)
        if found.complete and same:
            self.fingerprints[stage.name] = fp
            return Outcome(stage.name, "skipped", found.reason, run_id=rec.get("run_id", ""))
        if found.finish is not None and same:
            t0 = time.monotonic()
            found.finish()
            self._require_complete(stage, rec.get("run_id", ""))
            self.fingerprints[stage.name] = fp
            return Outcome(stage.name, "completed", found.reason, time.monotonic() - t0, rec.get("run_id", ""))
        return self._launch(stage, rec, upstream, fp, found.reason if same else "its inputs or config changed")

    def _refuse_stale(self, stage: Stage, rec: dict[str, Any], upstream: dict[str, str], found: Check) -> None:
        """Outputs made from another config or other inputs are never resumed or kept silently."""
        if stage.job == "evaluate" or not (found.complete or latest_checkpoint(stage.output)):
            return  # a report is simply made again; a stage without a checkpoint starts afresh
        what = changed_keys(rec.get("config", {}), stable_config(stage.cfg)) or "the outputs of " + ", ".join(
            n for n in upstream if upstream[n] != rec.get("upstream", {}).get(n)) + " changed"
        raise StageError(f"stage {stage.name}: {stage.output} holds outputs of another config or other inputs "
                         f"({what}); remove that folder or choose another pipeline.name to redo the stage")

    def _launch(self, stage: Stage, rec: dict[str, Any], upstream: dict[str, str], fp: str, why: str) -> Outcome:
        run_id, resumed = self.runs.child(stage.name, self.parent_id, rec)
        rec.update(run_id=run_id, status="running", fingerprint=fp or None, config=stable_config(stage.cfg),
                   upstream=upstream, attempts=int(rec.get("attempts", 0)) + 1, started=time.time())
        self.save()
        cfg = copy.deepcopy(stage.cfg)  # the jobs resolve paths and class counts in place
        if hasattr(cfg, "tracking"):
            cfg.tracking = child_config(cfg.tracking, self.parent_id, stage.name, run_id)
        log.info("stage %s: %s", stage.name, why)
        t0 = time.monotonic()
        try:
            self._ensure_ray()
            getattr(self.jobs, stage.job).run(cfg)
            if stage.job == "shard":
                self.runs.log_shard(run_id, self.parent_id, cfg)
            found = self._require_complete(stage, run_id)
        except Exception as exc:
            rec.update(status="failed", seconds=round(time.monotonic() - t0, 1))
            self.save()
            self.runs.end_child(run_id, "FAILED")
            where = sio.join(self.root, "logs", f"{stage.name}.error.txt")
            sio.write_text(where, traceback.format_exc())
            raise StageError(f"stage {stage.name} failed after {time.monotonic() - t0:.0f} s: {_first_line(exc)} "
                             f"(traceback: {where}); rerun the same command to continue it") from None
        except KeyboardInterrupt:
            rec.update(status="failed")
            self.save()
            self.runs.end_child(run_id, "KILLED")
            raise
        if stage.job == "shard":
            fp = fingerprint(stage, upstream, found.identity)
        seconds = round(time.monotonic() - t0, 1)
        rec.update(status="finished", fingerprint=fp, seconds=seconds, finished=time.time())
        self.save()
        self.runs.end_child(run_id, "FINISHED")
        self.fingerprints[stage.name] = fp
        note = f"; continued MLflow run {run_id[:8]}" if resumed else ""
        return Outcome(stage.name, "ran", why + note, seconds, run_id)

    def _require_complete(self, stage: Stage, run_id: str) -> Check:
        found = check(stage, run_id)
        if not found.complete:
            raise StageError(f"stage {stage.name} ended but its outputs are incomplete: {found.reason}")
        return found

    def _ensure_ray(self) -> None:
        """One Ray for every stage, started when the first stage needs it (a rerun that skips all needs none)."""
        if self._ray_on:
            return
        from pipeline.orchestration import ray_session

        need = [s.cfg.scaling.num_workers * s.cfg.scaling.cpus_per_worker + 1 for s in self.stages
                if s.selected and hasattr(s.cfg, "scaling")]
        cpus = self.cfg.pipeline.num_cpus or max([os.cpu_count() or 1, *need])
        self._ray.enter_context(ray_session(self.cfg.pipeline.ray_address, cpus))
        self._ray_on = True

    def record(self, status: str) -> dict[str, Any]:
        """State file, parent run (tags per stage, this invocation, the summary), then the parent's status."""
        n = self.state["invocations"]
        invocation = {"invocation": n, "status": status, "started": self._t0, "seconds": round(time.time() - self._t0, 1),
                      "stages": [dataclasses.asdict(o) for o in self.outcomes]}
        for o in self.outcomes:
            self.state["stages"].setdefault(o.stage, {}).update(last_outcome=o.outcome, last_reason=o.reason)
        self.state["last_invocation"] = invocation
        self.save()
        summary = summarize(self, status)
        sio.write_text(sio.join(self.root, "summary.json"), json.dumps(summary, indent=1) + "\n")
        parent = self.runs.parent
        if parent is not None:
            parent.set_tags({"invocations": n, "status_detail": status,
                             **{f"stage.{o.stage}": o.outcome for o in self.outcomes},
                             **{f"stage.{o.stage}.reason": o.reason[:4000] for o in self.outcomes}})
            parent.log_dict(invocation, f"invocations/{n:03d}.json")
            parent.log_text(compact_toml(self.cfg), f"invocations/{n:03d}.toml")
            parent.log_dict(self.state, STATE_FILE)
            parent.log_dict(summary, "summary.json")
            parent.log_metrics(summary.get("metrics", {}), step=n)
            parent.end(status)
        return summary


def mlflow_ui_command(uri: str) -> str:
    """How to look at the runs: ``mlflow ui`` on a SQLite store (next to this Python), else the server."""
    if not uri.startswith("sqlite:"):
        return f"open {redact_url(uri)}"
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    rel = os.path.relpath(exe)
    return f"{exe if rel.startswith('..') else rel} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def summarize(runner: Runner, status: str) -> dict[str, Any]:
    """What the pipeline produced, read back from the outputs and the MLflow store."""
    st = {s.name: s for s in runner.stages}
    ids = {name: rec.get("run_id", "") for name, rec in runner.state["stages"].items()}
    out: dict[str, Any] = {
        "pipeline": runner.cfg.pipeline.name, "status": status, "output": runner.root,
        "state": sio.join(runner.root, STATE_FILE), "stages": [dataclasses.asdict(o) for o in runner.outcomes],
        "mlflow": {"tracking_uri": redact_url(runner.uri), "experiment": runner.cfg.pipeline.experiment,
                   "parent_run_id": runner.parent_id, "stage_run_ids": ids, "ui": mlflow_ui_command(runner.uri)},
    }
    metrics: dict[str, float] = {}
    index = _json(sio.join(st["shard"].output, INDEX_NAME))
    if index:
        totals = index.get("totals", {})
        out["shards"] = {"output": st["shard"].output, "inputs": totals.get("inputs"), "samples": totals.get("samples"),
                         "quarantined": totals.get("quarantined"), "by_split": totals.get("by_split", {})}
        metrics.update(shard_samples=totals.get("samples", 0), shard_quarantined=totals.get("quarantined", 0))
    losses = runner.runs.loss_history(ids.get("pretrain", "")) if ids.get("pretrain") else []
    if losses or sio.exists(sio.join(st["pretrain"].output, "export")):
        out["pretrain"] = {"run": st["pretrain"].output, "export": sio.join(st["pretrain"].output, "export"),
                           "loss_steps": [losses[0][0], losses[-1][0]] if losses else None,
                           "loss_first": losses[0][1] if losses else None, "loss_last": losses[-1][1] if losses else None}
        if losses:
            metrics.update(pretrain_loss_first=losses[0][1], pretrain_loss_last=losses[-1][1])
    for name in ("finetune", "baseline"):
        stage = st[name]
        kept = next((sio.join(stage.output, "export", w) for w in ("best", "last")
                     if sio.exists(sio.join(stage.output, "export", w, CARD))), "")
        card = _json(sio.join(kept, CARD)) if kept and stage.selected else None
        if card:
            top1 = card.get("metrics", {}).get("val_top1")
            out[name] = {"model": kept, "val_top1": top1, "init": card.get("source", {}).get("init", "")}
            registered = stage.cfg.tracking.registered_model
            if registered:
                alias = stage.cfg.finetune.registered_alias
                out[name]["registered"] = f"models:/{registered}@{alias}" if alias else f"models:/{registered}"
            if top1 is not None:
                metrics[f"{name}_val_top1"] = top1
    report = _json(sio.join(st["evaluate"].output, "report.json"))
    if report:
        out["evaluate"] = {"report": sio.join(st["evaluate"].output, "report.json"), "split": report.get("split"),
                           "top1": report.get("top1"), "top5": report.get("top5"),
                           "views_per_video": report.get("views_per_video"), "num_videos": report.get("num_videos")}
        metrics.update({f"test_{k}": report[k] for k in ("top1", "top5") if isinstance(report.get(k), (int, float))})
    out["metrics"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return out


def run_pipeline(cfg: PipelineConfig, jobs: Jobs) -> dict[str, Any]:
    """Run (or resume, or skip through) the pipeline; returns the summary (see :func:`format_summary`)."""
    return Runner(cfg, jobs).run()


__all__ = ["Check", "EXPORTS", "Outcome", "Runner", "Runs", "STATE_FILE", "StageError", "changed_keys", "check",
           "check_evaluate", "check_finetune", "check_pretrain", "check_shard", "fingerprint", "load_state",
           "mlflow_ui_command", "pipeline_root", "plan_stages", "run_pipeline", "save_state", "summarize"]
