"""The MLflow runs of one pipeline: a parent run per pipeline and a child run per stage.

A stage job logs into the child run made for it (``tracking.run_id``; the child carries
``mlflow.parentRunId``); a stage that did not finish logs into its own earlier child run when
rerun. Everything goes through :mod:`pipeline.infra.tracking`.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.config import config_hash, to_dict
from pipeline.infra.tracking import CHART_KEYS, MlflowTracker, TrackingConfig, close_run, metric_history, run_is_active
from pipeline.workflow.pipeline_config import STAGES, PipelineConfig, given


class Runs:
    """The parent run and the stage runs of one pipeline in one MLflow store."""

    def __init__(self, uri: str, experiment: str, name: str) -> None:
        self.uri, self.experiment, self.name = uri, experiment, name
        self.parent: MlflowTracker | None = None

    def _cfg(self, **kw: Any) -> TrackingConfig:
        return TrackingConfig(tracking_uri=self.uri, experiment=self.experiment, system_metrics=False, **kw)

    def open_parent(self, state: dict[str, Any], cfg: PipelineConfig) -> str:
        """Continue the pipeline's parent run (rerun) or create it; returns its id."""
        known = state.get("parent_run_id") if run_is_active(self.uri, state.get("parent_run_id")) else ""
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
        if old and earlier.get("status") != "finished" and run_is_active(self.uri, old):
            return old, True
        tracker = MlflowTracker(self._cfg(parent_run_id=parent_id)).start(
            run_name=stage, tags={"stage": stage, "pipeline": self.name})
        return tracker.run_id or "", False  # left RUNNING: the stage logs into it and ends it

    def end_child(self, run_id: str, status: str) -> None:
        """Close a stage run the stage left open (a killed worker cannot close its own)."""
        close_run(self.uri, run_id, status)

    def loss_history(self, run_id: str, key: str = CHART_KEYS["loss"]) -> list[tuple[int, float]]:
        return metric_history(self.uri, run_id, key)

    def log_into(self, run_id: str, parent_id: str, cfg: Any, stage: str, metrics: dict[str, Any],
                 artifacts: dict[str, dict[str, Any]], tags: dict[str, Any]) -> None:
        """For a job that logs nothing itself: its config, ``metrics`` at step 0, JSON artifacts, tags."""
        tracker = MlflowTracker(self._cfg(run_id=run_id, parent_run_id=parent_id))
        with tracker.start(config=cfg, tags={"stage": stage}):
            tracker.log_metrics(metrics, 0)
            for name, data in artifacts.items():
                tracker.log_dict(data, name)
            tracker.set_tags(tags)


__all__ = ["Runs"]
