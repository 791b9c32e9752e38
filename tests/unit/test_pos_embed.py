"""Position tables when a checkpoint saved at one token grid is loaded at another.

The oracle restates OpenGVLab/VideoMAEv2's own steps: ``get_sinusoid_encoding_table``
(models/modeling_finetune.py) builds the model's table for its grid (``use_learnable_pos_emb=False``
in every registered model), then run_class_finetuning.py's "interpolate position embedding"
block (lines 593-669) acts on the checkpoint's and the model's tables, and ``utils.load_state_dict``
keeps only keys the model has (the fixed table is a plain attribute, so a checkpoint's
``pos_embed`` is an unexpected key and dropped).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.models import create_model
from pipeline.models.weights import load_official, to_official

PATCH, TUBELET = 16, 2


def official_sinusoid_table(n_position: int, d_hid: int) -> torch.Tensor:
    """models/modeling_finetune.py ``get_sinusoid_encoding_table``, restated."""
    table = np.array([[pos / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]
                      for pos in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float).unsqueeze(0)


def official_finetune_pos_embed(checkpoint: dict, num_frames: int, input_size: int, dim: int) -> torch.Tensor:
    """The table an official fine-tuning model ends with: run_class_finetuning.py L593-669 restated
    for its sin-cos models (``model.pos_embed`` is a plain tensor attribute, not a parameter)."""
    num_patches = (num_frames // TUBELET) * (input_size // PATCH) ** 2
    model_pos_embed = official_sinusoid_table(num_patches, dim)
    if "pos_embed" in checkpoint:
        pos_embed_checkpoint = checkpoint["pos_embed"]
        num_extra_tokens = model_pos_embed.shape[-2] - num_patches
        orig_size = int(((pos_embed_checkpoint.shape[-2] - num_extra_tokens) // (num_frames // TUBELET)) ** 0.5)
        new_size = int((num_patches // (num_frames // TUBELET)) ** 0.5)
        if orig_size != new_size:
            extra_tokens = pos_embed_checkpoint[:, :num_extra_tokens]
            pos_tokens = pos_embed_checkpoint[:, num_extra_tokens:]
            pos_tokens = pos_tokens.reshape(-1, num_frames // TUBELET, orig_size, orig_size, dim)
            pos_tokens = pos_tokens.reshape(-1, orig_size, orig_size, dim).permute(0, 3, 1, 2)
            pos_tokens = F.interpolate(pos_tokens, size=(new_size, new_size), mode="bicubic", align_corners=False)
            pos_tokens = pos_tokens.permute(0, 2, 3, 1).reshape(-1, num_frames // TUBELET, new_size, new_size, dim)
            checkpoint["pos_embed"] = torch.cat((extra_tokens, pos_tokens.flatten(1, 3)), dim=1)
    elif input_size != 224:
        pos_tokens = model_pos_embed
        T = 16 // TUBELET
        P = int((pos_tokens.shape[1] // T) ** 0.5)
        new_P = input_size // PATCH
        pos_tokens = pos_tokens.reshape(-1, T, P, P, dim).reshape(-1, P, P, dim).permute(0, 3, 1, 2)
        pos_tokens = F.interpolate(pos_tokens, size=(new_P, new_P), mode="bicubic", align_corners=False)
        model_pos_embed = pos_tokens.permute(0, 2, 3, 1).reshape(-1, T, new_P, new_P, dim).flatten(1, 3)
    if num_frames != 16:
        T = 16 // TUBELET
        pos_tokens = model_pos_embed
        new_T = num_frames // TUBELET
        P = int((pos_tokens.shape[1] // T) ** 0.5)
        pos_tokens = pos_tokens.reshape(-1, T, P, P, dim).permute(0, 2, 3, 4, 1).reshape(-1, dim, T)
        pos_tokens = F.interpolate(pos_tokens, size=new_T, mode="linear")
        model_pos_embed = pos_tokens.reshape(1, P, P, dim, new_T).permute(0, 4, 1, 2, 3).flatten(1, 3)
    # utils.load_state_dict: the model has no 'pos_embed' parameter -> the checkpoint's is an unexpected key
    return model_pos_embed


def _saved(num_frames: int, img_size: int, pos_embed: str) -> tuple[dict, int]:
    """An official-layout fine-tuning checkpoint of a vit_tiny classifier at (num_frames, img_size)."""
    torch.manual_seed(0)
    src = create_model("vit_tiny", task="classify", num_classes=5, num_frames=num_frames, img_size=img_size)
    state = to_official(src)
    n, dim = src.spec.num_tokens, src.spec.embed_dim
    if pos_embed == "learned":
        state["pos_embed"] = torch.randn(1, n, dim) * 0.02
    elif pos_embed == "sincos":
        state["pos_embed"] = official_sinusoid_table(n, dim)
    return state, dim


@pytest.mark.parametrize("pos_embed", ["none", "sincos", "learned"])
@pytest.mark.parametrize("new_size", [96, 128, 32])
def test_a_16_frame_checkpoint_at_another_size_gets_the_official_table(pos_embed, new_size):
    state, dim = _saved(16, 64, pos_embed)  # 8 x 4 x 4 tokens
    model = create_model("vit_tiny", task="classify", num_classes=5, num_frames=16, img_size=new_size)
    report = load_official(model, dict(state))
    oracle = official_finetune_pos_embed(dict(state), 16, new_size, dim)
    ours = model.encoder.pos_embed(torch.device("cpu"), torch.float32)
    assert ours.shape == oracle.shape == (1, 8 * (new_size // PATCH) ** 2, dim)
    torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-6)
    assert not report.unexpected and "encoder.pos_embed" not in report.loaded
    if pos_embed != "none":
        kind = "a learned table" if pos_embed == "learned" else "the fixed sin-cos table"
        assert any(f"pos_embed ({kind} of 128 tokens)" in note for note in report.notes), report.notes
    with torch.no_grad():
        model(torch.randn(1, 3, 16, new_size, new_size))  # the loaded model runs at its grid


@pytest.mark.parametrize("num_frames", [8, 32])
def test_another_frame_count_gets_the_table_official_builds_where_its_script_stops(num_frames):
    state, dim = _saved(16, 64, "none")
    model = create_model("vit_tiny", task="classify", num_classes=5, num_frames=num_frames, img_size=64)
    load_official(model, dict(state))
    # the official temporal step reshapes the table as 8 frames, which a table of another frame count is not
    with pytest.raises(RuntimeError, match="is invalid for input of size"):
        official_finetune_pos_embed(dict(state), num_frames, 64, dim)
    ours = model.encoder.pos_embed(torch.device("cpu"), torch.float32)
    built = official_sinusoid_table((num_frames // TUBELET) * (64 // PATCH) ** 2, dim)  # the model's own table
    torch.testing.assert_close(ours, built, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert math.isfinite(float(model(torch.randn(1, 3, num_frames, 64, 64)).sum()))
