"""What a pipeline produced, read back from its outputs and the MLflow store: ``summary.json``.

``jobs.pipeline`` prints it as a table (``format_summary``); the parent run gets it as an
artifact and its numbers as metrics.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

from pipeline.core import io as sio
from pipeline.data.shard_writer import INDEX_NAME
from pipeline.infra.tracking import experiment_id_of, experiment_ui_url, redact_url
from pipeline.train.model_registry import CARD, registered_uri
from pipeline.workflow.state import STATE_FILE, read_json

if TYPE_CHECKING:
    from pipeline.workflow.runner import Runner

UI_PORT = 5000


def mlflow_ui_command(uri: str) -> str:
    """How to look at the runs: ``mlflow ui`` on a SQLite store (next to this Python), else the server."""
    if not uri.startswith("sqlite:"):
        return f"open {redact_url(uri)}"
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    rel = os.path.relpath(exe)
    return f"{exe if rel.startswith('..') else rel} ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"


def mlflow_ui_page(uri: str, experiment_id: str) -> str:
    """The experiment's runs in the UI of :func:`mlflow_ui_command`, in the model-training view
    (MLflow 3's UI opens in its GenAI view otherwise); '' without an experiment."""
    if not experiment_id:
        return ""
    base = f"http://127.0.0.1:{UI_PORT}" if uri.startswith("sqlite:") else redact_url(uri)
    return experiment_ui_url(base, experiment_id)


def summarize(runner: Runner, status: str) -> dict[str, Any]:
    """What the pipeline produced, read back from the outputs and the MLflow store."""
    st = {s.name: s for s in runner.stages}
    ids = {name: rec.get("run_id", "") for name, rec in runner.state["stages"].items()}
    out: dict[str, Any] = {
        "pipeline": runner.cfg.pipeline.name, "status": status, "output": runner.root,
        "state": sio.join(runner.root, STATE_FILE), "stages": [dataclasses.asdict(o) for o in runner.outcomes],
        "mlflow": {"tracking_uri": redact_url(runner.uri), "experiment": runner.cfg.pipeline.experiment,
                   "parent_run_id": runner.parent_id, "stage_run_ids": ids, "ui": mlflow_ui_command(runner.uri),
                   "page": mlflow_ui_page(runner.uri, experiment_id_of(runner.uri, runner.cfg.pipeline.experiment))},
    }
    metrics: dict[str, float] = {}
    index = read_json(sio.join(st["shard"].output, INDEX_NAME))
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
    for name in ("postpretrain", "finetune", "baseline"):
        stage = st[name]
        kept = next((sio.join(stage.output, "export", w) for w in ("best", "last")
                     if sio.exists(sio.join(stage.output, "export", w, CARD))), "")
        card = read_json(sio.join(kept, CARD)) if kept and stage.selected else None
        if card:
            top1 = card.get("metrics", {}).get("val_top1")
            init = card.get("source", {}).get("init", "")
            came = "random init" if init in ("", "random") else (
                "post-pre-training" if name == "finetune" and st["postpretrain"].selected else "pre-training")
            out[name] = {"model": kept, "val_top1": top1, "init": init, "from": came,
                         "classes": len(card.get("class_names", []))}
            registered = stage.cfg.tracking.registered_model
            if registered and ids.get(name):  # by its alias only when the alias was moved to it
                uri = registered_uri(runner.uri, registered, stage.cfg.finetune.registered_alias, ids[name])
                if uri:
                    out[name]["registered"] = uri
            if top1 is not None:
                metrics[f"{name}_val_top1"] = top1
    tested = read_json(sio.join(st["baseline_evaluate"].output, "report.json")) if st["baseline_evaluate"].selected else None
    if tested and "baseline" in out:  # the random init on the test videos the fine-tuned model is evaluated on
        out["baseline"].update(test_split=tested.get("split"), test_top1=tested.get("top1"),
                               report=sio.join(st["baseline_evaluate"].output, "report.json"))
        if isinstance(tested.get("top1"), (int, float)):
            metrics["baseline_test_top1"] = tested["top1"]
    report = read_json(sio.join(st["evaluate"].output, "report.json"))
    if report:
        out["evaluate"] = {"report": sio.join(st["evaluate"].output, "report.json"), "split": report.get("split"),
                           "top1": report.get("top1"), "top5": report.get("top5"),
                           "views_per_video": report.get("views_per_video"), "num_videos": report.get("num_videos")}
        metrics.update({f"test_{k}": report[k] for k in ("top1", "top5") if isinstance(report.get(k), (int, float))})
        if "finetune" in out:  # beside the baseline's test top-1
            out["finetune"].update(test_split=report.get("split"), test_top1=report.get("top1"))
    out["metrics"] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    return out



__all__ = ["mlflow_ui_command", "mlflow_ui_page", "summarize"]
