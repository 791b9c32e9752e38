"""The runner: the stages of one pipeline in order, each skipped, finished or run.

For each stage it asks the stage's kind (:mod:`pipeline.workflow.stages`) what its outputs say
and skips the stage when they are complete and were made from the same config and the same
upstream outputs (:mod:`pipeline.workflow.state`). Otherwise the stage job's ``run(cfg)`` is
called in this process, inside one Ray session, logging into its child run
(:mod:`pipeline.workflow.runs`). The parent run records, per invocation, which stages ran or
were skipped and why, and the summary (:mod:`pipeline.workflow.summary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

from pipeline.core import io as sio
from pipeline.core.config import to_toml
from pipeline.core.errors import TubeletError, one_line
from pipeline.infra.tracking import TrackingConfig, child_config, resolve_uri
from pipeline.train.checkpoint import latest_checkpoint
from pipeline.workflow.pipeline_config import Jobs, PipelineConfig, Stage, pipeline_root, plan_stages, stable_config
from pipeline.workflow.runs import Runs
from pipeline.workflow.stages import Check, kind_of
from pipeline.workflow.state import STATE_FILE, changed_keys, load_state, only_new_defaults, save_state
from pipeline.workflow.summary import summarize

log = logging.getLogger(__name__)


class StageError(TubeletError):
    """A stage failed or cannot continue; one line, saying what to do."""


@dataclass
class Outcome:
    """What one invocation did with a stage, in the words the summary prints:

    - ``done``: it ran now, from the start; ``reason`` is what its outputs hold afterwards
    - ``resumed``: it ran now, continuing from what an earlier invocation left (a checkpoint, shards)
    - ``skipped``: its outputs were already complete; nothing ran
    - ``completed``: only its last step ran now (an export, a registration)
    - ``failed``, ``not selected``
    """

    stage: str
    outcome: str
    reason: str
    seconds: float = 0.0
    run_id: str = ""


def compact_toml(cfg: PipelineConfig) -> str:
    """The pipeline config as given: stage tables without keys are left out."""
    blocks = [b for b in to_toml(cfg).split("\n\n") if b.strip() and len(b.strip().splitlines()) > 1]
    return "\n\n".join(b.strip() for b in blocks) + "\n"


def _first_line(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TubeletError) else one_line(exc, with_type=True)


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
        return self.record("FINISHED")

    def stage(self, stage: Stage) -> Outcome:
        """Skip, finish or run one stage; returns what happened and why."""
        rec = self.state["stages"].setdefault(stage.name, {})
        if not stage.selected:
            self.fingerprints[stage.name] = rec.get("fingerprint", "")
            why = "not in pipeline.stages"
            if stage.name.startswith("baseline"):
                why = "pipeline.baseline is false" if not self.cfg.pipeline.baseline else "evaluate not in pipeline.stages"
            return Outcome(stage.name, "not selected", why, run_id=rec.get("run_id", ""))
        kind = kind_of(stage)
        upstream = {n: self.fingerprints.get(n, "") for n in stage.needs}
        try:
            found = kind.check(stage, rec.get("run_id", ""))
        except TubeletError as exc:
            raise StageError(f"stage {stage.name}: {exc}") from None
        fp = kind.fingerprint(stage, upstream, found)
        if not kind.judged_by_outputs and rec.get("fingerprint") not in (None, fp) and self._grown(stage, rec,
                                                                                               upstream):
            fp = rec["fingerprint"]  # the job grew keys at their defaults: the same outputs, the chain unchanged
        same = kind.judged_by_outputs or rec.get("fingerprint") in (None, fp)
        if not same:
            self._refuse_stale(stage, rec, upstream, found)
        if found.complete and same:
            self.fingerprints[stage.name] = fp
            return Outcome(stage.name, "skipped", f"already done: {found.reason}", run_id=rec.get("run_id", ""))
        if found.finish is not None and same:
            t0 = time.monotonic()
            found.finish()
            after = self._require_complete(stage, rec.get("run_id", ""))
            self.fingerprints[stage.name] = fp
            last = found.reason.rsplit(": ", 1)[-1]  # "exporting it", "registering"
            return Outcome(stage.name, "completed", f"only its last step ran ({last}); {after.reason}",
                           time.monotonic() - t0, rec.get("run_id", ""))
        return self._launch(stage, rec, upstream, fp, found, same)

    @staticmethod
    def _grown(stage: Stage, rec: dict[str, Any], upstream: dict[str, str]) -> bool:
        """The stage's recorded config and inputs are today's but for keys added since, at their defaults."""
        if rec.get("upstream", {}) != upstream or "config" not in rec:
            return False
        return only_new_defaults(rec["config"], stable_config(stage.cfg), stable_config(type(stage.cfg)()))

    def _refuse_stale(self, stage: Stage, rec: dict[str, Any], upstream: dict[str, str], found: Check) -> None:
        """Outputs made from another config or other inputs are never resumed or kept silently."""
        if kind_of(stage).remade_when_stale or not (found.complete or latest_checkpoint(stage.output)):
            return  # a report is simply made again; a stage without a checkpoint starts afresh
        what = changed_keys(rec.get("config", {}), stable_config(stage.cfg)) or "the outputs of " + ", ".join(
            n for n in upstream if upstream[n] != rec.get("upstream", {}).get(n)) + " changed"
        raise StageError(f"stage {stage.name}: {stage.output} holds outputs of another config or other inputs "
                         f"({what}); remove that folder or choose another pipeline.name to redo the stage")

    def _launch(self, stage: Stage, rec: dict[str, Any], upstream: dict[str, str], fp: str, before: Check,
                same: bool) -> Outcome:
        """Run the stage's job; the outcome says what its outputs hold now (not what they held before)."""
        why = before.reason if same else "its inputs or config changed"
        run_id, resumed = self.runs.child(stage.name, self.parent_id, rec)
        rec.update(run_id=run_id, status="running", fingerprint=fp or None, config=stable_config(stage.cfg),
                   upstream=upstream, attempts=int(rec.get("attempts", 0)) + 1, started=time.time())
        self.save()
        cfg = stage.cfg  # the jobs never change a config: they resolve a copy on their driver
        if hasattr(cfg, "tracking"):
            cfg = dataclasses.replace(cfg, tracking=child_config(cfg.tracking, self.parent_id, stage.name, run_id))
        log.info("stage %s: %s", stage.name, why)
        t0 = time.monotonic()
        try:
            self._ensure_ray()
            getattr(self.jobs, stage.job).run(cfg)
            kind_of(stage).after_run(stage, cfg, self.runs, run_id, self.parent_id)
            after = self._require_complete(stage, run_id)
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
        if kind_of(stage).judged_by_outputs or not fp:  # shards: known once they exist
            fp = kind_of(stage).fingerprint(stage, upstream, after)
        seconds = round(time.monotonic() - t0, 1)
        rec.update(status="finished", fingerprint=fp, seconds=seconds, finished=time.time())
        self.save()
        self.runs.end_child(run_id, "FINISHED")
        self.fingerprints[stage.name] = fp
        resumed_from = before.resumes if same else ""
        first = f"from {resumed_from}" if resumed_from else ("" if same else "redone: its inputs or config changed")
        note = f"; continued MLflow run {run_id[:8]}" if resumed else ""
        reason = "; ".join(p for p in (first, after.reason) if p) + note
        return Outcome(stage.name, "resumed" if resumed_from else "done", reason, seconds, run_id)

    def _require_complete(self, stage: Stage, run_id: str) -> Check:
        found = kind_of(stage).check(stage, run_id)
        if not found.complete:
            raise StageError(f"stage {stage.name} ended but its outputs are incomplete: {found.reason}")
        return found

    def _ensure_ray(self) -> None:
        """One Ray for every stage, started when the first stage needs it (a rerun that skips all needs none)."""
        if self._ray_on:
            return
        from pipeline.orchestration.console import log_path
        from pipeline.orchestration.ray_train import ray_session

        need = [s.cfg.scaling.num_workers * s.cfg.scaling.cpus_per_worker + 1 for s in self.stages
                if s.selected and hasattr(s.cfg, "scaling")]
        cpus = self.cfg.pipeline.num_cpus or max([os.cpu_count() or 1, *need])
        self._ray.enter_context(ray_session(self.cfg.pipeline.ray_address, cpus, log_file=log_path(self.root)))
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


def run_pipeline(cfg: PipelineConfig, jobs: Jobs) -> dict[str, Any]:
    """Run (or resume, or skip through) the pipeline; returns the summary (``jobs.pipeline`` prints it)."""
    return Runner(cfg, jobs).run()


__all__ = ["Outcome", "Runner", "StageError", "compact_toml", "run_pipeline"]
