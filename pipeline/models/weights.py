"""Interop with the public VideoMAE V1 / V2 checkpoints (MCG-NJU/VideoMAE, OpenGVLab/VideoMAEv2).

Official layouts (``qkv_bias=True``; fixed sin-cos positions are plain tensors, never saved):

- pre-training: ``encoder.patch_embed.proj.{weight,bias}``, ``encoder.blocks.{i}.{norm1,norm2}.*``,
  ``encoder.blocks.{i}.attn.{qkv.weight,q_bias,v_bias,proj.*}``, ``encoder.blocks.{i}.mlp.{fc1,fc2}.*``,
  (``...gamma_1/gamma_2`` with layer scale), ``encoder.norm.*``, ``encoder_to_decoder.weight``,
  ``mask_token``, ``decoder.blocks.{i}.*``, ``decoder.norm.*``, ``decoder.head.*``;
- fine-tuning: the same encoder keys without the ``encoder.`` prefix, then ``fc_norm.*`` and
  ``head.*`` with mean pooling, or ``norm.*`` without it;

either of them possibly wrapped in ``{"model": ...}`` / ``{"module": ...}`` and/or with DDP's
``module.`` key prefix. Our module names mirror the official ones, so the mapping is only about
prefixes and about which parts a model has.

Positions at another frame count or size: see :func:`pos_embed_note`. Every model here, like every
official one, has fixed sin-cos positions for its own token grid; a ``pos_embed`` a checkpoint may
carry is dropped (as official fine-tuning drops it), and the model's table is the official one.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from pipeline.core.errors import TubeletError

log = logging.getLogger(__name__)

_WRAPPERS = ("model", "module", "state_dict", "model_state")
_STRIP_PREFIXES = ("module.", "backbone.")
_BLOCK = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.")
_DECODER_PARTS = ("decoder.", "encoder_to_decoder.", "mask_token")
_HEAD_PARTS = ("fc_norm.", "head.")


class CheckpointError(TubeletError, ValueError):
    """A checkpoint that does not fit the model (architecture, patch size, depth)."""


@dataclass
class LoadReport:
    """What :func:`load_official` did: model keys loaded / left as initialised, keys not used, notes."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {len(self.loaded)} tensors, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        return "; ".join([text, *self.notes])


def unwrap(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The bare state dict: inside a ``model``/``module`` wrapper, without ``module.`` prefixes."""
    while not all(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(f"no state dict found; top-level keys: {', '.join(list(state)[:8])}")
        state = inner
    out = {}
    for key, value in state.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def official_to_ours_key(key: str) -> str:
    """Fine-tuning layout keys gain the ``encoder.`` prefix; everything else keeps its name."""
    if key.startswith(("patch_embed.", "blocks.", "norm.", "pos_embed")):
        return "encoder." + key
    return key


def pos_embed_note(key: str, value: torch.Tensor) -> str:
    """The note for a checkpoint's position table, which is never loaded: as official.

    Official (OpenGVLab/VideoMAEv2): every registered model in ``models/modeling_pretrain.py`` and
    ``models/modeling_finetune.py`` has ``use_learnable_pos_emb=False`` (no command-line flag turns it
    on), so ``pos_embed`` is ``get_sinusoid_encoding_table(num_patches, dim)`` for the model's own grid
    (1-D over the t-major token index), a plain tensor attribute that checkpoints never contain.
    ``run_class_finetuning.py`` ("interpolate position embedding") then:

    - if the checkpoint carries a ``pos_embed``: resizes it per frame to the new H x W (bicubic), but
      ``utils.load_state_dict`` drops it as an unexpected key (the model has no such parameter);
    - else, at ``--input_size != 224``: reshapes the model's own table as 16 // tubelet frames and
      resizes it bicubically to the size it already has, an identity (16 frames);
    - at ``--num_frames != 16``: reshapes the model's table as 16 // tubelet frames to interpolate it
      in time, which fails for a table built at another frame count (8 or 32 frames raise; 64
      mixes frames into rows).

    So at 16 frames and any size the official table is the fixed table of the new grid, which is
    what :class:`~pipeline.models.layers.SinCosPosEmbed` computes (at other frame counts too, where
    the official script stops). The checkpoint's table is never used, here as there.
    """
    from pipeline.models.layers import sincos_table

    n, dim = value.shape[-2], value.shape[-1]
    fixed = value.ndim == 3 and torch.allclose(value.float()[0], sincos_table(n, dim)[0], atol=1e-3)
    kind = "the fixed sin-cos table" if fixed else "a learned table"
    return (f"ignored the checkpoint's {key} ({kind} of {n} tokens): positions are the fixed sin-cos table of the "
            "model's own grid, as in every official model (official fine-tuning drops a saved one too)")


def _skip_reason(key: str, has_decoder: bool, has_fc_norm: bool) -> str | None:
    """Why a checkpoint key has no place in this model (a note), or None if it is unexpected."""
    if key.startswith(_DECODER_PARTS) and not has_decoder:
        return "skipped the pre-training decoder (encoder_to_decoder, mask_token, decoder.*)"
    if key.startswith("encoder.norm.") and has_fc_norm:
        return "skipped encoder.norm: mean pooling normalises with fc_norm (as official fine-tuning)"
    if key.startswith(_HEAD_PARTS) and not has_fc_norm:
        return "skipped the classifier head (fc_norm, head): a pre-training model has none"
    return None


def _depth(keys: list[str], part: str) -> int:
    ids = [int(m.group(2)) for m in map(_BLOCK.match, keys) if m and m.group(1) == part]
    return max(ids) + 1 if ids else 0


def _check_depths(mapped: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> None:
    for part in ("encoder", "decoder"):
        theirs, ours = _depth(list(mapped), part), _depth(list(own), part)
        if theirs and ours and theirs != ours:
            raise CheckpointError(f"checkpoint {part} has {theirs} blocks, the model {ours}: pick the matching size")


def _shape_error(key: str, theirs: torch.Size, ours: torch.Size) -> CheckpointError:
    if key == "encoder.patch_embed.proj.weight" and tuple(theirs[2:]) != tuple(ours[2:]):
        return CheckpointError(f"tubelet x patch size {list(theirs[2:])} in the checkpoint vs {list(ours[2:])} "
                               "in the model: pick the matching patch_size / tubelet_size")
    return CheckpointError(f"{key}: shape {list(theirs)} in the checkpoint vs {list(ours)} in the model: "
                           "the checkpoint is for another architecture (model size)")


def _plan(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, Any]
          ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Which of a checkpoint's tensors load into a model whose state dict is ``own`` (real or meta
    tensors: only names and shapes are read): ``(usable, notes, unexpected)``. Raises
    :class:`CheckpointError` on depth, width or patch-size mismatch."""
    has_decoder = any(k.startswith("decoder.") for k in own)
    has_fc_norm = any(k.startswith("fc_norm.") for k in own)
    mapped = {official_to_ours_key(k): v for k, v in unwrap(state_dict).items()}
    _check_depths(mapped, own)
    usable, notes, unexpected = {}, [], []
    for key, value in mapped.items():
        if key not in own:
            reason = pos_embed_note(key, value) if key.endswith("pos_embed") else _skip_reason(
                key, has_decoder, has_fc_norm)
            notes.append(reason) if reason else unexpected.append(key)
            continue
        if value.shape != own[key].shape:
            if key.startswith("head."):
                notes.append(f"re-initialised head: checkpoint has {value.shape[0]} classes, "
                             f"the model {own[key].shape[0]}")
                continue
            raise _shape_error(key, value.shape, own[key].shape)
        usable[key] = value
    return usable, notes, unexpected


def load_official(model: nn.Module, state_dict: Mapping[str, Any], drop_head: bool = False) -> LoadReport:
    """Load an official (or our) checkpoint into ``model`` (pre-training model or classifier).

    Raises :class:`CheckpointError` on depth, width or patch-size mismatch. A classifier head
    of another class count is re-initialised (noted); parts the model lacks are skipped (noted).
    ``drop_head``: the checkpoint's classifier head (``head.*``) is not loaded whatever its shape
    (an init trained on other classes; noted); ``fc_norm`` is kept, as VideoMAE V2 keeps it.
    """
    own = model.state_dict()
    has_fc_norm = any(k.startswith("fc_norm.") for k in own)
    dropped = False
    if drop_head:
        whole = unwrap(state_dict)
        state_dict = {k: v for k, v in whole.items() if not official_to_ours_key(k).startswith("head.")}
        dropped = len(state_dict) < len(whole)
    usable, notes, unexpected = _plan(own, state_dict)
    if dropped:
        notes.insert(0, "dropped the checkpoint's classifier head (its classes are not this model's): the head "
                        "starts fresh")
    report = LoadReport(unexpected=unexpected)
    result = model.load_state_dict(usable, strict=False)
    if any(n.startswith("re-initialised head") for n in notes):
        model.reset_classifier(model.num_classes)  # type: ignore[operator]
    report.loaded = sorted(usable)
    report.missing = sorted(result.missing_keys)
    head_reset = any(n.startswith("re-initialised head") for n in notes)
    if has_fc_norm and any(k.startswith("head.") for k in report.missing) and "head.weight" not in usable \
            and not head_reset and not dropped:
        notes.append("head kept freshly initialised: the checkpoint has none")
    if any(".adapter." in k for k in report.missing):
        notes.append("adapters kept freshly initialised (zero up-projection): the checkpoint has none")
    report.notes = list(dict.fromkeys(notes))  # de-duplicated, in order
    return report


def to_official(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our state dict in the official layout: pre-training as is, a classifier without ``encoder.``."""
    state = model.state_dict()
    if any(k.startswith("decoder.") for k in state):
        return dict(state)
    return {(k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}


def read_weights(path: Path, mmap: bool = False) -> Mapping[str, Any]:
    """A checkpoint file's contents; ``mmap``: tensors mapped, not read (zip-format files only)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:  # official files also pickle their argparse Namespace
            log.warning("%s holds more than tensors; loading it with full unpickling (trusted files only)", path)
            return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} is not a readable torch weights file ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'empty or cut short'})") from None


def load_file(model: nn.Module, path: str | Path, drop_head: bool = False) -> LoadReport:
    """Load a ``.pth``/``.pt`` file into ``model`` and log the report (``drop_head``: see :func:`load_official`)."""
    path = Path(path)
    report = load_official(model, read_weights(path), drop_head)
    log.info("loaded %s: %s", path, report)
    return report


def check_state(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointError` (one line) when ``state_dict`` would not load into ``model``,
    without loading it: ``model`` may be built on the meta device, the tensors memory-mapped
    (:func:`read_weights` with ``mmap``: only their headers are read)."""
    _plan(model.state_dict(), state_dict)
