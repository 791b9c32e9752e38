"""Video classifier for fine-tuning: encoder on all tokens, mean pool, fc-norm, linear head."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.hooks import ParamHooks
from pipeline.models.layers import AttnImpl, init_linear_trunc_normal, reset_adapters
from pipeline.models.sizes import ArchSpec
from pipeline.models.vit import VideoViT

# Official fine-tuning default (--init_scale 0.001): a near-zero head starts from uniform logits.
HEAD_INIT_SCALE = 0.001


class Classifier(ParamHooks, nn.Module):
    """``forward(video [B, C, T, H, W]) -> logits [B, num_classes]`` (official fine-tuning layout)."""

    def __init__(self, spec: ArchSpec, num_classes: int = 400, drop_path: float = 0.0,
                 layer_scale_init: float = 0.0, attn_impl: AttnImpl = "sdpa", head_drop: float = 0.0,
                 init_scale: float = HEAD_INIT_SCALE) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.init_scale = init_scale
        # Mean pooling replaces the encoder's final norm with fc_norm after pooling (official).
        self.encoder = VideoViT(spec, drop_path, layer_scale_init, attn_impl, final_norm=False)
        self.fc_norm = nn.LayerNorm(spec.embed_dim, eps=spec.norm_eps)
        self.head_drop = nn.Dropout(head_drop)
        self.head: nn.Module = nn.Identity()
        self.apply(init_linear_trunc_normal)
        reset_adapters(self)
        self.reset_classifier(num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh head for ``num_classes`` (0 = features only), initialised as the official code."""
        self.num_classes = num_classes
        if num_classes <= 0:
            self.head = nn.Identity()
            return
        device = self.fc_norm.weight.device
        self.head = nn.Linear(self.spec.embed_dim, num_classes, device=device)
        init_linear_trunc_normal(self.head)
        with torch.no_grad():
            self.head.weight.mul_(self.init_scale)
            self.head.bias.mul_(self.init_scale)

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, C, T, H, W] -> [B, D]`` (mean over all tokens, then fc_norm)."""
        return self.fc_norm(self.encoder.forward_features(video).mean(dim=1))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``features: [B, D] -> logits [B, K]`` (or the dropped-out features if ``pre_logits``)."""
        features = self.head_drop(features)
        return features if pre_logits else self.head(features)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(video))

    def set_attn_impl(self, impl: AttnImpl) -> None:
        self.encoder.set_attn_impl(impl)
