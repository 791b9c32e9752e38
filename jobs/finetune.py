"""Fine-tune a video classifier on labelled shards with Ray Train + DeepSpeed ZeRO.

    python -m jobs.finetune --config finetune/demo --set data.shards=DIR|s3://... \
        --set model.init=runs/pretrain/demo [--set tracking.registered_model=motion-vit]

``model.init``: a pre-training run folder (its ``export/pretrain_fp32.pt``), an export folder, a
weights file (ours or a public VideoMAE V1/V2 checkpoint, pre-trained or fine-tuned), a model
folder (each local or ``s3://``), ``runs:/<run_id>/<path>``, ``models:/name@alias`` or
``models:/name/<version>``, or ``random`` for a random init (a baseline: said by name, an empty
``model.init`` is refused in one line before anything starts). It is resolved once here to one concrete file;
each node downloads a remote one once into its cache. The card beside the weights (a pre-training
export's ``card.json``, a model folder's ``model.json``) gives the architecture and
``data.sampling_rate`` unless the config sets them (a differing value is kept and said; another
patch size is refused). The checkpoint is checked against the model in the driver first: another
architecture or patch size stops the job in one line, a head
with another class count is re-initialised (printed). Relaunching the same ``run.name`` resumes.
At the end ``<run>/export/{best,last}`` hold model folders; with ``tracking.registered_model``
the kept one is registered in MLflow, tagged with the validation top-1 it was kept on and what
that was measured on. ``finetune.registered_alias`` moves to it per ``finetune.promote``: by
default only when no version holds the alias or the holder scored lower on the same validation
data; the job says in one line what happened.

Several labelled shard sets (``data.sources``: progressive training's post-pre-training on a
labelled hybrid) train as one label space, merged by class name; ``data.exclude_shards`` names
shard sets whose held-out videos (``data.exclude_splits``) are never trained on. The samples left
out (those videos, and repeats across the sources) are found here, before Ray starts, and listed
with their reasons in ``<run>/excluded_samples.jsonl`` (:mod:`pipeline.data.hybrid`). An init
whose card lists other classes than the data's loses its head (``model.init_head = "auto"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from typing import Any, Callable

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import to_toml, with_values
from pipeline.data.hybrid import EXCLUSIONS_NAME
from pipeline.models.model_config import RANDOM_INIT, init_weights
from pipeline.models.weights import CheckpointError, LoadReport
from pipeline.orchestration.driver import check_on_driver, resolve_on_driver
from pipeline.orchestration.ray_train import fit
from pipeline.train.finetune import check_config, class_names, finetune, validation_data
from pipeline.train.job_configs import FinetuneConfig
from pipeline.train.model_registry import CARD, FINETUNE_INIT_FILES, find_card, register_model
from pipeline.train.model_registry import resolve_init as resolve_init_uri
from pipeline.train.supervised import data_classes, leaves_out, write_left_out

log = logging.getLogger("jobs.finetune")

def resolve_init(spec: str, tracking_uri: str = "") -> str:
    """The weights file ``model.init`` names (see the module docstring), local or s3://; '' and
    ``random`` stay as they are."""
    return resolve_init_uri(spec, tracking_uri or None, FINETUNE_INIT_FILES)


def check_init(cfg: FinetuneConfig) -> LoadReport | None:
    """Load ``model.init`` into a shapes-only (meta) classifier: the architecture check and the notes
    (skipped decoder, re-initialised head) before any worker starts. Raises CheckpointError."""
    if not init_weights(cfg.model.init):
        return None
    import torch

    from pipeline.models import create_model_from_config
    from pipeline.models.weights import load_official

    model = create_model_from_config(dataclasses.replace(cfg.model, init=""), "classify", device="meta")
    local = sio.cached_copy(cfg.model.init)  # this node's copy: the workers here reuse it
    try:
        state = torch.load(local, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 — official files also pickle their argparse Namespace (trusted files)
        try:
            state = torch.load(local, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"model.init {cfg.model.init}: not a torch checkpoint ({type(exc).__name__})") from None
    with warnings.catch_warnings():  # copying into meta tensors is the intended no-op: shapes only
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        return load_official(model, state, drop_head=cfg.model.init_head == "drop")


def init_head(cfg: FinetuneConfig, names: list[str]) -> str:
    """``model.init_head`` made concrete: ``auto`` drops the head of an init whose card lists other
    classes than ``names`` (the data's), and keeps it otherwise (no card, or the same classes)."""
    if cfg.model.init_head != "auto":
        return cfg.model.init_head
    found = find_card(cfg.model.init) if init_weights(cfg.model.init) else None
    theirs = list(found[0].class_names) if found else []
    if theirs and theirs != names:
        print(f"model.init_head=auto: dropping the head of {cfg.model.init}: it was trained on {len(theirs)} other "
              f"classes ({', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}); this run has {len(names)}")
        return "drop"
    return "keep"


def prepare(cfg: FinetuneConfig) -> FinetuneConfig:
    """Driver-side checks, then the resolved config (absolute paths, tracking URI, ``model.init`` as
    one concrete file, ``model.num_classes`` from the shard labels when asked); ``cfg`` is left as
    it was. Fails in one line."""
    check_config(cfg)
    cfg = resolve_on_driver(cfg, FINETUNE_INIT_FILES)
    index = check_on_driver(cfg, train=True, val_split=cfg.finetune.val_split, task="classify")
    names = data_classes(cfg, index)
    if cfg.data.sources:
        print(f"data.sources: {len(names)} classes merged by name from {len(cfg.data.sources)} labelled shard sets")
    if cfg.finetune.classes_from_data and len(names) != cfg.model.num_classes:
        where = "merged labels of data.sources" if cfg.data.sources else "labels of the shard index"
        print(f"model.num_classes: {cfg.model.num_classes} -> {len(names)} ({where})")
        cfg = with_values(cfg, {"model.num_classes": len(names)})
    class_names(cfg, names=names)  # the head fits the data's classes (read once above)
    cfg = with_values(cfg, {"model.init_head": init_head(cfg, names)})
    report = check_init(cfg)
    if report is not None:
        print(f"init {cfg.model.init}: {report}")
    elif cfg.model.init == RANDOM_INIT:
        print(f"model.init=random: fine-tuning from a random init (run.seed {cfg.run.seed}), no pre-trained weights")
    return cfg


def kept_folder(cfg: FinetuneConfig) -> str:
    """``export/best`` (or ``last`` when asked, or when there was no validation)."""
    export = sio.join(cfg.run.output, cfg.run.name, "export")
    best = sio.join(export, "best")
    if cfg.finetune.keep == "best" and sio.exists(sio.join(best, CARD)):
        return best
    return sio.join(export, "last")


def train_and_register(cfg: FinetuneConfig, loop: Callable[..., Any], config_name: str) -> int:
    """Save the resolved config, run ``loop`` under Ray Train, print what was kept and register it
    (a classifier job's whole run after its driver checks: fine-tuning's and distillation's)."""
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    sio.write_text(sio.join(run_dir, config_name), to_toml(cfg))
    fit(cfg, loop, keep_checkpoints=cfg.train.keep_checkpoints, loader_workers=cfg.data.num_workers)
    folder = kept_folder(cfg)
    card = json.loads(sio.read_text(sio.join(folder, CARD)))
    print(f"run: {run_dir}  model: {folder}  metrics: {card['metrics']}")
    run_id = card["source"].get("mlflow_run_id", "")
    if cfg.tracking.enabled and cfg.tracking.registered_model and run_id:
        registration = register_model(cfg.tracking.tracking_uri, run_id, cfg.tracking.registered_model,
                                      cfg.finetune.registered_alias, folder, cfg.finetune.promote, validation_data(cfg))
        print(registration.message)
    return 0


def run(cfg: FinetuneConfig) -> int:
    cfg = prepare(cfg)
    if leaves_out(cfg):  # found once here; every rank's loader reads the list from the run folder
        print(f"{write_left_out(cfg).summary()} (listed in {sio.join(cfg.run.output, cfg.run.name, EXCLUSIONS_NAME)})")
    return train_and_register(cfg, finetune, "finetune.toml")


if __name__ == "__main__":
    raise SystemExit(job_main(FinetuneConfig, run, prog="jobs.finetune", default_config="finetune/demo"))
