"""The config of ``jobs.pipeline``: one TOML for shard -> pre-train -> fine-tune -> evaluate.

Each stage section names the stage job's own config file and changes only what differs::

    [pretrain]
    config = "pretrain/demo"        # jobs/configs/pretrain/demo.toml: the recipe
    [pretrain.train]
    steps = 60                      # on top of it (also: --set pretrain.train.steps=60)

so a recipe lives in one place (the stage's config file) and the pipeline file reads as a list
of differences. The stage tables mirror the stage config classes key by key (typed, checked,
listed by ``--list-keys``), but every key is *unset* until given: a table present in the
pipeline file does not reset the base file's other keys to class defaults.

Precedence per stage: the base file < what the pipeline wires (outputs under
``<pipeline.output>/<pipeline.name>/``, each stage's input = the previous stage's output, the
tracking store and parent run) < keys given in the stage table. Give a wired key only to break
the chain on purpose (e.g. ``pretrain.data.shards`` = shards made elsewhere).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import ConfigError, flatten, help_field, load_config, to_dict
from pipeline.models.model_config import ARCHITECTURE_KEYS, RANDOM_INIT
from pipeline.orchestration.sharding import ShardSection
from pipeline.train.job_configs import EvaluateConfig, FinetuneConfig, PretrainConfig

STAGES = ("shard", "pretrain", "postpretrain", "finetune", "evaluate", "baseline")


def overrides_class(cls: type, name: str, first: tuple[str, Any, Any] | None = None) -> type:
    """A dataclass with the fields of ``cls`` (recursively), each leaf optional and unset (None);
    ``first``: an extra leading field ``(name, type, field)``."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = [first] if first else []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sub = overrides_class(tp, f"{name}_{f.name}")
            fields.append((f.name, sub, field(default_factory=sub, metadata=f.metadata)))
        else:
            fields.append((f.name, typing.Optional[tp], field(default=None, metadata=f.metadata)))
    made = dataclasses.make_dataclass(name, fields)
    made.__module__ = __name__  # make_dataclass(module=) is Python 3.12+
    return made


def stage_class(name: str, cls: type, base: str, base_help: str) -> type:
    """One pipeline stage table: ``config`` (the stage job's base file) + the unset mirror of ``cls``."""
    return overrides_class(cls, name, ("config", str, help_field(base, help=base_help)))


ShardStage = stage_class("ShardStage", ShardSection, "shard/default",
                         "base config of the shard job (its [shard] table); keys here override it")
PretrainStage = stage_class("PretrainStage", PretrainConfig, "pretrain/demo",
                            "base config of jobs.pretrain; the tables here override its keys")
PostpretrainStage = stage_class(
    "PostpretrainStage", FinetuneConfig, "finetune/demo",
    "base config of the post-pre-training (jobs.finetune on the labelled hybrid of data.sources); keys here override it")
FinetuneStage = stage_class("FinetuneStage", FinetuneConfig, "finetune/demo",
                            "base config of jobs.finetune; the tables here override its keys")
EvaluateStage = stage_class("EvaluateStage", EvaluateConfig, "evaluate/demo",
                            "base config of jobs.evaluate; the tables here override its keys")
BaselineStage = overrides_class(FinetuneConfig, "BaselineStage")


@dataclass
class PipelineSection:
    """The pipeline itself (TOML section ``[pipeline]``)."""

    name: str = help_field("demo", help="pipeline name: outputs in <output>/<name>/, rerunning the name resumes it")
    output: str = help_field("runs/pipeline", help="root of pipeline outputs (local folder or s3://)")
    stages: list[str] = help_field(["shard", "pretrain", "finetune", "evaluate"],
                                   help="stages to run, of: shard, pretrain, postpretrain (progressive training: "
                                        "supervised on labelled hybrid shard sets between them), finetune, evaluate")
    baseline: bool = help_field(False, help="also fine-tune from random init (the fine-tune config, no init) and "
                                           "evaluate it as the fine-tuned model is, to compare")
    tracking_uri: str = help_field("", help="MLflow store ('' = $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)")
    experiment: str = help_field("tubelet", help="MLflow experiment of the parent and the stage runs")
    ray_address: str = help_field("", help="Ray cluster address ('' = RAY_ADDRESS or one embedded Ray for all stages)")
    num_cpus: int = help_field(0, help="logical CPUs of the embedded Ray (0 = what the largest stage needs)")

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES[:-1]]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES[:-1])} "
                             "(the baseline is pipeline.baseline = true)")
        if not self.name or "/" in self.name:
            raise ValueError(f"name {self.name!r} must be a non-empty folder name")


@dataclass
class PipelineConfig:
    """Shard -> pre-train -> fine-tune -> evaluate in one job, one MLflow parent run, resumable."""

    pipeline: PipelineSection = field(default_factory=PipelineSection)
    shard: ShardStage = field(default_factory=ShardStage)  # type: ignore[valid-type]
    pretrain: PretrainStage = field(default_factory=PretrainStage)  # type: ignore[valid-type]
    postpretrain: PostpretrainStage = field(default_factory=PostpretrainStage)  # type: ignore[valid-type]
    finetune: FinetuneStage = field(default_factory=FinetuneStage)  # type: ignore[valid-type]
    evaluate: EvaluateStage = field(default_factory=EvaluateStage)  # type: ignore[valid-type]
    baseline: BaselineStage = field(default_factory=BaselineStage)  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------
# Resolution: base file + wiring + the keys given


def given(section: Any) -> dict[str, Any]:
    """The keys set in a stage table, flattened (``{"train.steps": 60}``); ``config`` left out."""
    return {k: v for k, v in flatten(to_dict(section, redact=False)).items() if v is not None and k != "config"}


def build_stage(cls: type, base: Path | None, *layers: dict[str, Any], prefix: str = "") -> Any:
    """Load ``cls`` from ``base`` with each layer of flat, typed ``{key: value}`` changes applied in turn.

    ``prefix`` puts the keys under a table of the base file (the shard job's ``[shard]``).
    Unknown keys and wrong types fail in one line, as for the stage job itself.
    """
    values = {f"{prefix}{key}": value for layer in layers for key, value in layer.items()}
    return load_config(cls, base, values=values)


def find_base(find: Callable[[str, str | None], Path | None], stage: str, spec: str) -> Path:
    """The base config file of a stage (``finetune/demo`` or a path), or a one-line ConfigError."""
    try:
        path = find(spec, None)
    except ConfigError as exc:
        raise ConfigError(f"{stage}.config: {exc}") from None
    if path is None:
        raise ConfigError(f"{stage}.config is empty: name the stage job's config file (e.g. {stage}/demo)")
    return path




# --------------------------------------------------------------------------------------------
# Wiring: the stages of one pipeline, each with its resolved config


@dataclass
class StageJob:
    """A stage job's config class and its ``run(cfg)`` (``jobs.<name>``), handed in by the launcher
    so that the library never imports a launcher."""

    config: type
    run: Callable[[Any], Any]


@dataclass
class Jobs:
    shard: StageJob
    pretrain: StageJob
    finetune: StageJob
    evaluate: StageJob
    find_config: Callable[[str, str | None], Path | None]  # "pretrain/demo" -> jobs/configs/pretrain/demo.toml


@dataclass
class Stage:
    """One stage of a pipeline: its job, resolved config, output folder and upstream stages."""

    name: str
    job: str  # shard | pretrain | finetune | evaluate (the baseline is a fine-tune)
    cfg: Any
    output: str
    needs: tuple[str, ...]
    selected: bool


def pipeline_root(section: PipelineSection) -> str:
    """``<output>/<name>``; absolute when local (Ray workers run in their own working directory)."""
    from pipeline.core import io as sio

    output = section.output if sio.is_remote(section.output) else str(Path(section.output).absolute())
    return sio.join(output, section.name)


def plan_stages(cfg: PipelineConfig, jobs: Jobs, tracking_uri: str) -> list[Stage]:
    """Every stage's config: base file < wiring < the keys given in its table; in run order."""
    from pipeline.core import io as sio

    p, root = cfg.pipeline, pipeline_root(cfg.pipeline)
    track = {"tracking.tracking_uri": tracking_uri, "tracking.experiment": p.experiment}
    sh = build_stage(jobs.shard.config, find_base(jobs.find_config, "shard", cfg.shard.config),
                     {"output": sio.join(root, "shards")}, given(cfg.shard), prefix="shard.")
    shards = sh.shard.output
    pt = build_stage(jobs.pretrain.config, find_base(jobs.find_config, "pretrain", cfg.pretrain.config),
                     {"run.output": root, "run.name": "pretrain", "data.shards": shards, **track}, given(cfg.pretrain))
    pt_dir = sio.join(pt.run.output, pt.run.name)
    on = set(p.stages)
    # Progressive training (VideoMAE V2): the pre-trained encoder is first trained supervised on a
    # labelled hybrid (data.sources, label spaces merged by class name), never on a video the target
    # holds out (its val and test splits), and the target is fine-tuned from that classifier (whose
    # head, trained on the hybrid's classes, is dropped: model.init_head = auto).
    pp = build_stage(jobs.finetune.config, find_base(jobs.find_config, "postpretrain", cfg.postpretrain.config),
                     {"run.output": root, "run.name": "postpretrain", "data.shards": "", "model.init": pt_dir,
                      "data.exclude_shards": [shards], "finetune.val_split": "", "tracking.registered_model": "",
                      **track}, given(cfg.postpretrain))
    pp_dir = sio.join(pp.run.output, pp.run.name)
    if "postpretrain" in on and not pp.data.sources:
        raise ConfigError("postpretrain.data.sources is empty: name the labelled shard sets the post-pre-training "
                          "trains on (e.g. postpretrain.data.sources=[\"shards/k400\", \"shards/k600\"])")
    ft_base = find_base(jobs.find_config, "finetune", cfg.finetune.config)
    ft_init = pp_dir if "postpretrain" in on else pt_dir
    ft_wired = {"run.output": root, "run.name": "finetune", "data.shards": shards, "model.init": ft_init, **track}
    ft = build_stage(jobs.finetune.config, ft_base, ft_wired, given(cfg.finetune))
    ft_dir = sio.join(ft.run.output, ft.run.name)
    # Evaluation reads the fine-tuned model folder, whose card brings the architecture; wiring it
    # here too lets the plan show the clip size the evaluation will cut.
    arch = {f"model.{k}": getattr(ft.model, k) for k in ARCHITECTURE_KEYS}
    ev = build_stage(jobs.evaluate.config, find_base(jobs.find_config, "evaluate", cfg.evaluate.config),
                     {"run.output": sio.join(root, "evaluate"), "run.name": "evaluate", "data.shards": shards,
                      "model.init": ft_dir, **arch, **track}, given(cfg.evaluate))
    # The baseline is the fine-tune stage from random init: same recipe, no weights, never registered.
    bl = build_stage(jobs.finetune.config, ft_base, ft_wired, given(cfg.finetune),
                     {"run.name": "baseline", "model.init": RANDOM_INIT, "tracking.registered_model": ""},
                     given(cfg.baseline))
    bl_dir = sio.join(bl.run.output, bl.run.name)
    # ... and it is evaluated as the fine-tuned model is (the [evaluate] table: split, views), so the
    # summary compares the two on the same test videos, not only on the fine-tuning's val split.
    bl_arch = {f"model.{k}": getattr(bl.model, k) for k in ARCHITECTURE_KEYS}
    bl_ev = build_stage(jobs.evaluate.config, find_base(jobs.find_config, "evaluate", cfg.evaluate.config),
                        {"run.output": sio.join(root, "baseline_evaluate"), "run.name": "baseline_evaluate",
                         "data.shards": shards, "model.init": bl_dir, **bl_arch, **track}, given(cfg.evaluate))
    return [
        Stage("shard", "shard", sh, shards, (), "shard" in on),
        Stage("pretrain", "pretrain", pt, pt_dir, ("shard",), "pretrain" in on),
        Stage("postpretrain", "finetune", pp, pp_dir, ("shard", "pretrain"), "postpretrain" in on),
        Stage("finetune", "finetune", ft, ft_dir, ("shard", "postpretrain" if "postpretrain" in on else "pretrain"),
              "finetune" in on),
        Stage("evaluate", "evaluate", ev, ev.run.output, ("shard", "finetune"), "evaluate" in on),
        Stage("baseline", "finetune", bl, bl_dir, ("shard",), p.baseline),
        Stage("baseline_evaluate", "evaluate", bl_ev, bl_ev.run.output, ("shard", "baseline"),
              p.baseline and "evaluate" in on),
    ]


# Keys that change how a stage runs, not what it produces: a resumed or skipped stage may differ in them.
VOLATILE = ("tracking.", "scaling.", "ray.", "train.fail_at_step", "train.log_every", "train.image_every",
            "train.keep_checkpoints", "shard.progress", "shard.max_in_flight", "shard.task_timeout",
            "finetune.registered_alias", "finetune.promote", "eval.view_chunk", "data.worker_start")


def stable_config(cfg: Any) -> dict[str, Any]:
    """The flattened config of a stage without its :data:`VOLATILE` keys: what its outputs depend on."""
    return {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(VOLATILE)}


__all__ = ["BaselineStage", "EvaluateStage", "FinetuneStage", "Jobs", "PipelineConfig", "PipelineSection",
           "PostpretrainStage", "PretrainStage", "STAGES", "ShardStage", "Stage", "StageJob", "VOLATILE", "build_stage", "find_base", "given",
           "overrides_class", "pipeline_root", "plan_stages", "stable_config"]
