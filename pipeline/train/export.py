"""Consolidated fp32 weights from a pre-training checkpoint, in our layout and the official one.

Written at the end of a run (by the driver, from the checkpoint in storage):
``pretrain_fp32.pt`` (the whole model, our keys: what ``model.init`` takes for fine-tuning or
continued pre-training), ``encoder_fp32.pt`` (encoder only) and ``videomae_official.pt``
(``{"model": state_dict}`` with the public VideoMAE V2 key names), and ``card.json``: the
architecture and data recipe (clip, sampling rate, normalisation) the weights were trained with,
which the jobs that start from them default to (:mod:`pipeline.orchestration.driver`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.core import io as sio
from pipeline.core.config import to_dict
from pipeline.infra import engine as eng
from pipeline.models import create_model_from_config
from pipeline.models.model_config import PretrainModelConfig
from pipeline.models.weights import to_official
from pipeline.train.checkpoint import LOOP_FILE
from pipeline.train.model_registry import EXPORT_CARD, ModelCard, recipe_data, write_card

log = logging.getLogger(__name__)


def consolidated_state(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the model in a checkpoint folder: the optimizer's fp32 master weights
    for ZeRO 1-3 in any precision (bf16 ZeRO-1/2 shards are ``bf16_zero_pp_rank_*``), the module
    itself for ZeRO-0."""
    root = Path(checkpoint_dir)
    tag = json.loads((root / LOOP_FILE).read_text())["tag"]
    ds = root / "ds"
    shards = sorted((ds / tag).glob("*zero_pp_rank_*_optim_states.pt"), key=_dp_rank)
    model_states = ds / tag / "mp_rank_00_model_states.pt"
    if shards and _is_bf16_optimizer(shards[0]):  # bf16 ZeRO-1 with fp32 accumulation: BF16_Optimizer's layout
        state = _bf16_optimizer_masters(shards, torch.load(model_states, map_location="cpu", weights_only=False))
    elif shards:
        state = eng.consolidate_fp32(ds, tag)
    else:  # ZeRO-0: the model states file holds the whole module (fp32 unless trained in bf16/fp16)
        module = torch.load(model_states, map_location="cpu", weights_only=False)["module"]
        low = sorted(k for k, v in module.items() if v.is_floating_point() and v.dtype != torch.float32)
        if low:
            log.warning("ZeRO-0 %s checkpoint: the export holds its %s weights (DeepSpeed keeps ZeRO-0's fp32 "
                        "masters unnamed); train with zero_stage >= 1 for fp32 master exports",
                        tag, module[low[0]].dtype)
        state = module
    return {k: v.float().contiguous() for k, v in state.items()}


def _dp_rank(path: Path) -> int:
    return int(path.name.split("zero_pp_rank_")[1].split("_")[0])


def _is_bf16_optimizer(shard: Path) -> bool:
    optim = torch.load(shard, map_location="cpu", weights_only=False, mmap=True)["optimizer_state_dict"]
    return "param_slice_mappings" in optim and "zero_stage" not in optim


def _bf16_optimizer_masters(shards: list[Path], model_states: dict) -> dict[str, torch.Tensor]:
    """Whole fp32 masters from BF16_Optimizer shards: each rank's flat fp32 partition per group,
    with ``param_slice_mappings`` naming the slice of every parameter it holds."""
    pieces: dict[str, list[torch.Tensor]] = {}
    for shard in shards:  # in rank order: a parameter's slices concatenate in that order
        optim = torch.load(shard, map_location="cpu", weights_only=False)["optimizer_state_dict"]
        for flat, mapping in zip(optim["single_partition_of_fp32_groups"], optim["param_slice_mappings"]):
            for name, frag in mapping.items():
                pieces.setdefault(name, []).append(flat.narrow(0, frag.start, frag.numel))
    module = model_states["module"]
    state = {k: v for k, v in module.items() if k not in pieces}  # buffers and frozen parameters
    for name, parts in pieces.items():
        state[name] = torch.cat(parts).view(module[name].shape)
    return state


def export_weights(checkpoint_dir: str | Path, model_cfg: PretrainModelConfig, output: str,
                   data_cfg: Any = None, source: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the three weight files under ``output`` (local or s3://) and, with ``data_cfg`` (the
    run's ``[data]``), their card ``card.json``: the architecture and the data recipe (clip,
    sampling rate, normalisation) that fine-tuning, evaluation and extraction default to.
    Returns their locations."""
    state = consolidated_state(checkpoint_dir)
    model = create_model_from_config(dataclasses.replace(model_cfg, init=""), "pretrain")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "pos" not in k]:
        raise RuntimeError(f"checkpoint does not match model {model_cfg.name}: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    files = {
        "pretrain_fp32.pt": state,
        "encoder_fp32.pt": {k: v for k, v in state.items() if k.startswith("encoder.")},
        "videomae_official.pt": {"model": to_official(model)},
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload in files.items():
            local = Path(tmp) / name
            torch.save(payload, local)
            sio.upload_file(local, sio.join(output, name))
            out[name] = sio.join(output, name)
    if data_cfg is not None:
        arch = {**to_dict(dataclasses.replace(model_cfg, init=""), redact=False), "patch_size": model.spec.patch_size}
        card = ModelCard(model=arch, class_names=[],
                         data=recipe_data(data_cfg), source=dict(source or {}))
        write_card(card, output, EXPORT_CARD)
        out[EXPORT_CARD] = sio.join(output, EXPORT_CARD)
    log.info("exported %s", ", ".join(out.values()))
    return out
