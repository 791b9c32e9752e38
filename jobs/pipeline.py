"""Shard -> pre-train [-> post-pre-train] -> fine-tune -> evaluate in one job, from one TOML.

    python -m jobs.pipeline --config pipeline/demo [--set pretrain.train.steps=100] [--json]
    python -m jobs.pipeline --config pipeline/progressive     # with post-pre-training on a labelled hybrid

Outputs under ``<pipeline.output>/<pipeline.name>/``: ``shards/``, ``pretrain/``, (``postpretrain/``), ``finetune/``,
``evaluate/`` (and ``baseline/``, ``baseline_evaluate/``), ``pipeline_state.json``, ``summary.json``. One MLflow parent
run with a child run per stage. Rerunning the same command skips complete stages and continues
an interrupted one (in its own MLflow run). Each stage is the stage job's ``run(cfg)``, called
here in one process with one Ray (embedded, or the cluster of ``RAY_ADDRESS``).
"""

from __future__ import annotations

import json
from typing import Any

from jobs._cli import job_main, resolve_config_path
from jobs.registry import JOBS as REGISTRY
from pipeline.workflow import run_pipeline
from pipeline.workflow.pipeline_config import Jobs, PipelineConfig, StageJob


def _stage_job(name: str) -> StageJob:
    """A stage's job as the registry has it: its config class and its ``run(cfg)``."""
    job = REGISTRY[name]
    return StageJob(job.config_class(), job.load().run)


JOBS = Jobs(shard=_stage_job("shard"), pretrain=_stage_job("pretrain"), finetune=_stage_job("finetune"),
            evaluate=_stage_job("evaluate"), find_config=resolve_config_path)


def _num(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_summary(s: dict[str, Any]) -> str:
    """The table printed at the end: what ran, what came out, where it is, how to look at it."""
    lines = [f"pipeline {s['pipeline']}: {s['status'].lower()}  ({s['output']})"]
    width = max((len(o["stage"]) for o in s["stages"]), default=9)
    for o in s["stages"]:  # done | resumed | skipped (already done) | completed (its last step) | ...
        took = f"{o['seconds']:7.1f} s" if o["seconds"] else " " * 9
        lines.append(f"  {o['stage']:<{width}} {o['outcome']:<12} {took}  {o['reason']}")
    if "shards" in s:
        sh = s["shards"]
        splits = ", ".join(f"{k} {v['samples']} in {v['shards']} shards" for k, v in sorted(sh["by_split"].items()))
        lines.append(f"shards     {splits}; quarantined {sh['quarantined']} of {sh['inputs']} inputs  -> {sh['output']}")
    if "pretrain" in s:
        p = s["pretrain"]
        steps = p["loss_steps"] or ["?", "?"]
        lines.append(f"pre-train  loss {_num(p['loss_first'], '.4f')} (step {steps[0]}) -> {_num(p['loss_last'], '.4f')} "
                     f"(step {steps[1]})  -> {p['export']}")
    if "postpretrain" in s:  # no validation: it trains on the hybrid's merged classes
        f = s["postpretrain"]
        lines.append(f"post-pre   {f['classes']} merged classes (from {f['from']})  -> {f['model']}")
    for name, label in (("finetune", "fine-tune"), ("baseline", "baseline")):
        if name in s:
            f = s[name]
            reg = f"  registered {f['registered']}" if f.get("registered") else ""
            test = f"  {f['test_split']} top-1 {_num(f['test_top1'])}" if "test_top1" in f else ""
            lines.append(f"{label:<10} val top-1 {_num(f['val_top1'])}{test} (from {f['from']})  -> {f['model']}{reg}")
    if "evaluate" in s:
        e = s["evaluate"]
        lines.append(f"evaluate   {e['split']} top-1 {_num(e['top1'])}  top-5 {_num(e['top5'])}  "
                     f"({e['num_videos']} videos x {e['views_per_video']} views)  -> {e['report']}")
    m = s["mlflow"]
    lines.append(f"MLflow     parent run {m['parent_run_id']} in experiment {m['experiment']!r} at {m['tracking_uri']}")
    lines.append(f"MLflow UI  {m['ui']}")
    if m.get("page"):
        lines.append(f"           then open {m['page']}")
    return "\n".join(lines)


def run(cfg: PipelineConfig, json_output: bool = False) -> int:
    summary = run_pipeline(cfg, JOBS)
    print(json.dumps(summary, indent=1) if json_output else format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(PipelineConfig, run, prog="jobs.pipeline", default_config="pipeline/demo"))
