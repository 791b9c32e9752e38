"""Per-parameter hooks the trainer uses instead of guessing names (timm style).

Both models hold their encoder as ``self.encoder``. Layer ids for layer-wise lr decay follow
the official ``get_num_layer_for_vit``: patch embedding (and positions/tokens) 0, block ``i``
``i + 1``, everything after the encoder (norms, heads, the decoder) ``depth + 1``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")
_EMBED = ("encoder.patch_embed.", "encoder.pos_embed", "mask_token", "cls_token")


class ParamHooks:
    """Mixin for models with an ``encoder`` (a :class:`~pipeline.models.vit.VideoViT`)."""

    encoder: Any

    def no_weight_decay(self) -> set[str]:
        """Names that never get weight decay even if they are matrices (tokens, positions)."""
        names = {n for n, _ in self.named_parameters()}  # type: ignore[attr-defined]
        return {n for n in names if n.split(".")[-1] in ("mask_token", "pos_embed", "cls_token")}

    def decays(self, name: str, param: nn.Parameter) -> bool:
        """True if ``param`` gets weight decay: not biases, norms, layer scales, tokens (official rule)."""
        # Under ZeRO-3 a parameter is a 1-D placeholder; its real shape is ``ds_shape``.
        ndim = len(getattr(param, "ds_shape", param.shape))
        return not (ndim <= 1 or name.endswith(".bias") or name in self.no_weight_decay())

    def num_layers(self) -> int:
        """Number of distinct layer ids: embedding, each block, and the top."""
        return self.encoder.spec.depth + 2

    def layer_id(self, name: str) -> int:
        """Layer-decay id of parameter ``name``: embed 0, block i -> i + 1, the rest depth + 1."""
        if name.startswith(_EMBED):
            return 0
        match = _BLOCK.match(name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers() - 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing for every transformer block of the model."""
        for module in self.modules():  # type: ignore[attr-defined]
            if hasattr(module, "grad_checkpointing") and module is not self:
                module.grad_checkpointing = enable


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 with_names: bool = True) -> list[dict[str, Any]]:
    """Optimizer groups: (decay or not) x layer id, each with ``lr_scale = layer_decay ** (L - 1 - id)``.

    The trainer multiplies its lr by ``lr_scale``; ``layer_decay = 1`` gives plain AdamW groups.
    ``with_names=False`` leaves the parameter names out (DeepSpeed copies group keys into every
    checkpoint).
    """
    hooks: ParamHooks = model  # type: ignore[assignment]
    top = hooks.num_layers() - 1
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = hooks.decays(name, param)
        lid = hooks.layer_id(name) if layer_decay != 1.0 else top
        group = groups.setdefault((decay, lid), {"params": [], "layer_id": lid,
                                                 "weight_decay": weight_decay if decay else 0.0,
                                                 "lr_scale": layer_decay ** (top - lid)})
        group["params"].append(param)
        if with_names:
            group.setdefault("names", []).append(name)
    return list(groups.values())
