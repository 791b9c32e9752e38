"""The config of every per-rank loop job, in one place: one dataclass per TOML table.

- :class:`PretrainConfig` (``jobs.pretrain``), :class:`FinetuneConfig` (``jobs.finetune``),
  :class:`DistillConfig` (``jobs.distill``),
  :class:`EvaluateConfig` (``jobs.evaluate``), :class:`ExtractConfig` (``jobs.extract``);
- each holds the section classes with exactly the keys its job reads: ``[model]`` from
  :mod:`pipeline.models.model_config`, ``[data]`` from :mod:`pipeline.data.loader`, ``[train]``
  here (pre-training adds pictures and the export);
- the clip the loader cuts follows ``[model]`` (``data.num_frames`` / ``data.input_size`` are
  derived, not keys), filled in each config's ``__post_init__``.

The shared sections keep their pre-training defaults; the fine-tuning recipe values (layer decay
0.75, drop path 0.1, betas 0.9/0.999, ...) live in ``jobs/configs/finetune/*.toml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pipeline.core.config import fill_derived, help_field
from pipeline.data.loader import EvalDataConfig, FinetuneDataConfig, TrainDataConfig
from pipeline.data.masking import MaskConfig
from pipeline.infra.engine import DeepSpeedConfig, OptimConfig
from pipeline.infra.tracking import TrackingConfig
from pipeline.models.model_config import ClassifierConfig, FinetuneModelConfig, PretrainModelConfig
from pipeline.train.mixup import MixupConfig

ExtractMode = Literal["pooled", "per_clip"]


@dataclass
class RunSection:
    name: str = help_field("pretrain", help="run name: relaunching the same name resumes it")
    output: str = help_field("runs/pretrain", help="where runs live: <output>/<name>/ (local dir or s3://)")
    seed: int = help_field(0, help="seed of model init, augmentation and masks")


@dataclass
class TrainSection:
    """The schedule of a training loop (TOML section ``[train]``)."""

    steps: int = help_field(100, help="optimizer steps in total")
    log_every: int = help_field(10, help="steps between metric logs and progress lines")
    checkpoint_every: int = help_field(50, help="steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = help_field(2, help="checkpoints kept in Ray Train storage")
    max_nonfinite: int = help_field(
        5, help="non-finite (NaN/inf) losses in a row that stop the job; each one skips its micro-batch")
    fail_at_step: int = help_field(-1, help="testing: crash rank 0 once after this step (-1 = never)")
    fault_nonfinite_step: int = help_field(-1, help="testing: from this step on, the last rank's loss is inf (-1 = never)")
    fault_nonfinite_count: int = help_field(0, help="testing: how many inf losses fault_nonfinite_step injects")

    def __post_init__(self) -> None:
        if self.max_nonfinite < 1:
            raise ValueError(f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")


@dataclass
class PretrainTrainSection(TrainSection):
    """Pre-training's schedule: + the reconstruction pictures and the fp32 export (``[train]``)."""

    image_every: int = help_field(50, help="steps between reconstruction pictures (0 = never)")
    export: bool = help_field(True, help="write consolidated fp32 weights (ours + official layout) at the end")


@dataclass
class ScalingSection:
    num_workers: int = help_field(2, help="Ray Train workers (one rank each)")
    use_gpu: bool = help_field(False, help="one GPU per worker")
    cpus_per_worker: int = help_field(1, help="CPUs reserved per worker")
    max_failures: int = help_field(1, help="worker crashes survived by restarting from the last checkpoint")
    torch_threads: int = help_field(
        0, help="intra-op threads per worker (0 = CPUs per worker minus data.num_workers loader processes, at least 1)")


@dataclass
class PretrainConfig:
    """VideoMAE V2 pre-training with Ray Train + DeepSpeed ZeRO."""

    run: RunSection = field(default_factory=RunSection)
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: PretrainTrainSection = field(default_factory=PretrainTrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # The run's MLflow params: the recipe at a glance (MLflow prints a run's every param above its
    # reconstruction picture). The whole config is the run's config.toml artifact; its hash the config_hash tag.
    # Six, so that the picture stays in view on MLflow's default card size.
    mlflow_params: ClassVar[tuple[str, ...]] = (
        "model.name", "mask.encoder_ratio", "optim.lr", "optim.blr", "train.steps", "deepspeed.zero_stage")

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's


@dataclass
class FinetuneSection:
    """What is trained, how it is validated, and what is kept (TOML section ``[finetune]``)."""

    mode: Literal["full", "linear_probe", "adapter"] = help_field(
        "full", help="full: encoder + head; linear_probe: frozen encoder, train fc_norm + head; "
                     "adapter: frozen encoder, train AdaptFormer adapters (model.adapter_dim) + fc_norm + head")
    val_split: str = help_field("val", help="split validated on during training ('' = none)")
    val_every: int = help_field(0, help="steps between validations; 0 = once per epoch (and always at the end)")
    val_num_clips: int = help_field(1, help="validation: temporal clips per video (full test: jobs.evaluate)")
    val_num_crops: int = help_field(1, help="validation: spatial crops per clip")
    classes_from_data: bool = help_field(True, help="set model.num_classes to the label count of the shard index")
    keep: Literal["best", "last"] = help_field("best", help="weights exported as model.pt and registered")
    registered_alias: str = help_field("champion", help="alias of the registered model that the new version may take "
                                                         "(tracking.registered_model; '' = none)")
    promote: Literal["if_better", "always", "never"] = help_field(
        "if_better", help="when the alias moves to the new version: if_better = when no version holds it, or the "
                          "holder was validated on the same data with a lower val top-1; always; never")

    def __post_init__(self) -> None:
        if self.val_every < 0 or self.val_num_clips < 1 or self.val_num_crops < 1:
            raise ValueError("finetune.val_every >= 0, val_num_clips and val_num_crops >= 1")


@dataclass
class FinetuneTracking(TrackingConfig):
    """Fine-tuning's tracking: + the model registry entry of the kept weights (``[tracking]``)."""

    registered_model: str = help_field("", help="register the kept weights under this model name ('' = no)")


@dataclass
class FinetuneConfig:
    """Fine-tune a video classifier (pre-trained encoder + head) with Ray Train + DeepSpeed ZeRO."""

    run: RunSection = field(default_factory=RunSection)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: FinetuneTracking = field(default_factory=FinetuneTracking)

    mlflow_params: ClassVar[tuple[str, ...]] = (  # as PretrainConfig's: the rest is in config.toml
        "model.name", "model.patch_size", "finetune.mode", "data.sampling_rate", "data.batch_size", "optim.lr",
        "optim.blr", "optim.layer_decay", "train.steps", "deepspeed.zero_stage", "deepspeed.precision")

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's


@dataclass
class DistillSection:
    """The teacher and the distillation loss (TOML section ``[distill]``).

    Loss per micro-batch: ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha)
    * CE(student, target) + feature_weight * SP(student features, teacher features)``, the target being
    fine-tuning's (mixup / cutmix, label smoothing); on unlabelled shards the KD term (and SP) alone.
    SP, off by default (``feature_weight = 0``), is similarity-preserving distillation of the pooled
    clip features (Tung & Mori, ICCV 2019): the batch's row-normalised Gram matrices of both models,
    their squared Frobenius distance over ``B^2``; it needs no projector, so the widths may differ.
    The defaults: ``T = 1`` as in "Knowledge distillation: A good teacher is patient and consistent"
    (Beyer et al., CVPR 2022), whose teacher, as here, sees the very augmented (and mixed) clip the
    student sees, and which found T = 1 best in that setting;
    Hinton et al.'s ``T^2`` keeps the KD gradients' scale independent of ``T`` when it is raised.
    ``alpha = 0.5``: DeiT's soft distillation weighting of the label and teacher terms (Touvron et al., 2021).
    """

    teacher: str = help_field("", help="the fine-tuned classifier that teaches: a model folder, a fine-tuning run "
                                       "folder (its export/best), runs:/<run_id>/<path> or models:/<name>@<alias>")
    temperature: float = help_field(1.0, help="softmax temperature T of both logits in the KD term (scaled by T^2)")
    alpha: float = help_field(0.5, help="weight of the KD term; 1 - alpha weighs the label cross entropy "
                                        "(unlabelled shards: KD only, alpha taken as 1)")
    feature_weight: float = help_field(0.0, help="weight of the similarity-preserving feature term (Tung & Mori, "
                                                 "ICCV 2019: the batch's row-normalised Gram matrices of the pooled "
                                                 "features of student and teacher, any widths); 0 = off")

    def __post_init__(self) -> None:
        if self.temperature <= 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.temperature must be > 0 and distill.alpha in [0, 1] "
                             f"(got {self.temperature}, {self.alpha})")
        if not self.feature_weight >= 0.0:  # NaN too
            raise ValueError(f"distill.feature_weight must be >= 0 (0 = no feature term; got {self.feature_weight})")


@dataclass
class DistillConfig:
    """Distil a fine-tuned teacher classifier into a student (the ``[model]``) with Ray Train + DeepSpeed ZeRO.

    The student's sections are fine-tuning's (``[finetune]``: mode, validation, what is kept and
    registered); ``[distill]`` names the teacher and weighs the loss.
    """

    run: RunSection = field(default_factory=RunSection)
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    distill: DistillSection = field(default_factory=DistillSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: FinetuneTracking = field(default_factory=FinetuneTracking)

    mlflow_params: ClassVar[tuple[str, ...]] = (  # FinetuneConfig's + the teacher and the loss weights
        "model.name", "model.patch_size", "finetune.mode", "data.sampling_rate", "data.batch_size", "optim.lr",
        "optim.blr", "optim.layer_decay", "train.steps", "deepspeed.zero_stage", "deepspeed.precision",
        "distill.teacher", "distill.temperature", "distill.alpha", "distill.feature_weight")

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's


@dataclass
class EvalSection:
    """What is reported (TOML section ``[eval]``)."""

    topk: tuple[int, ...] = help_field((1, 5), help="top-k accuracies reported")
    view_chunk: int = help_field(0, help="views per forward pass (0 = a whole batch of videos at once)")
    precision: Literal["fp32", "bf16"] = help_field("fp32", help="inference dtype")


@dataclass
class EvaluateConfig:
    """Multi-view evaluation (clips x crops, softmax averaged per video) of a classifier on a shard split.

    ``model.init`` is ``models:/name@alias``, a fine-tuning run folder (its ``export/``), or a weights
    file (then ``model.*`` describes the architecture).
    """

    run: RunSection = field(default_factory=RunSection)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's


@dataclass
class ExtractSection:
    """What is written (TOML section ``[extract]``)."""

    mode: ExtractMode = help_field("pooled", help="pooled: one row per video (mean of all views); "
                                            "per_clip: one row per temporal clip (mean of its crops)")
    format: Literal["parquet", "npz"] = help_field("parquet", help="file format of the feature parts")
    precision: Literal["fp32", "bf16"] = help_field("fp32", help="inference dtype (features are stored as float32)")
    view_chunk: int = help_field(0, help="views per forward pass (0 = a whole batch of videos at once)")


@dataclass
class ExtractConfig:
    """Encoder features of every video of a shard split, written as Parquet or NumPy with the sample keys.

    ``model.init``: ``models:/name@alias``, a fine-tuning run / model folder, a pre-training run or
    export folder (``pretrain_fp32.pt``), a weights file (ours or official VideoMAE; then ``model.*``
    gives the architecture), or ``random`` (or empty) for a random init seeded with ``run.seed`` (a baseline).
    """

    run: RunSection = field(default_factory=RunSection)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    extract: ExtractSection = field(default_factory=ExtractSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's
