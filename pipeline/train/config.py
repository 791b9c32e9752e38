"""The pre-training job config: one dataclass per TOML table (``jobs/configs/pretrain/*.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.config import fill_derived, help_field
from pipeline.data.loader import TrainDataConfig
from pipeline.infra.engine import DeepSpeedConfig, OptimConfig
from pipeline.data.masking import MaskConfig
from pipeline.models.model_config import PretrainModelConfig
from pipeline.infra.tracking import TrackingConfig


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

    def __post_init__(self) -> None:
        fill_derived(self)  # the clip size the loader cuts is the model's
