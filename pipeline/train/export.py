"""Consolidated fp32 weights from a pre-training checkpoint, in our layout and the official one.

Written at the end of a run (by the driver, from the checkpoint in storage):
``pretrain_fp32.pt`` (the whole model, our keys: what ``model.init`` takes for fine-tuning or
continued pre-training), ``encoder_fp32.pt`` (encoder only) and ``videomae_official.pt``
(``{"model": state_dict}`` with the public VideoMAE V2 key names).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch

from pipeline import engine as eng
from pipeline import io as sio
from pipeline.models import create_model_from_config
from pipeline.models.checkpoints import to_official
from pipeline.models.config import ModelConfig
from pipeline.train.checkpoint import LOOP_FILE

log = logging.getLogger(__name__)


def consolidated_state(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the model in a checkpoint folder (any ZeRO stage)."""
    root = Path(checkpoint_dir)
    tag = json.loads((root / LOOP_FILE).read_text())["tag"]
    ds = root / "ds"
    if any((ds / tag).glob("*optim_states.pt")) and any((ds / tag).glob("zero_pp_rank_*")):
        state = eng.consolidate_fp32(ds, tag)
    else:  # ZeRO-0: the model states file holds the whole module
        state = torch.load(ds / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float().contiguous() for k, v in state.items()}


def export_weights(checkpoint_dir: str | Path, model_cfg: ModelConfig, output: str) -> dict[str, str]:
    """Write the three weight files under ``output`` (local or s3://); returns their locations."""
    state = consolidated_state(checkpoint_dir)
    model = create_model_from_config(ModelConfig(**{**model_cfg.__dict__, "init": ""}), "pretrain")
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
    log.info("exported %s", ", ".join(out.values()))
    return out
