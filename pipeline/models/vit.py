"""The video ViT encoder shared by pre-training and classification.

``forward_features(video, index)`` embeds a clip ``[B, C, T, H, W]`` into tubelet tokens,
adds fixed sin-cos positions, keeps only the tokens in ``index`` (the encoder-visible ones
during pre-training; all of them when ``index`` is None) and runs the blocks: ``[B, n, D]``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.models.layers import AttnImpl, Block, PatchEmbed, SinCosPosEmbed, drop_path_rates
from pipeline.models.sizes import ArchSpec


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x: [B or 1, N, D]``, ``index: [B, n]`` -> ``[B, n, D]``."""
    x = x.expand(index.shape[0], -1, -1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """Apply ``blocks`` in order; with checkpointing, activations are recomputed in backward."""
    for blk in blocks:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blk(x)
    return x


class VideoViT(nn.Module):
    """Tubelet embedding + positions + ``depth`` blocks (+ final LayerNorm when ``final_norm``)."""

    def __init__(self, spec: ArchSpec, drop_path: float = 0.0, layer_scale_init: float = 0.0,
                 attn_impl: AttnImpl = "sdpa", final_norm: bool = True, embed_visible_only: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.embed_visible_only = embed_visible_only
        self.patch_embed = PatchEmbed(spec.embed_dim, spec.patch_size, spec.tubelet_size, spec.in_chans)
        self.pos_embed = SinCosPosEmbed(spec.num_tokens, spec.embed_dim)
        self.blocks = nn.ModuleList(
            Block(spec.embed_dim, spec.num_heads, spec.mlp_dim, spec.qkv_bias, dpr, layer_scale_init,
                  attn_impl, spec.norm_eps, spec.adapter_dim, spec.adapter_scale)
            for dpr in drop_path_rates(drop_path, spec.depth))
        self.norm = nn.LayerNorm(spec.embed_dim, eps=spec.norm_eps) if final_norm else nn.Identity()
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (memory for compute)."""
        self.grad_checkpointing = enable

    def set_attn_impl(self, impl: AttnImpl) -> None:
        for blk in self.blocks:
            blk.attn.attn_impl = impl

    def check_input(self, video: torch.Tensor) -> None:
        s = self.spec
        want = (s.in_chans, s.num_frames, s.img_size, s.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(f"expected video [B, {', '.join(map(str, want))}], got {list(video.shape)}")

    def embed(self, video: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens + positions: ``[B, N, D]``, or ``[B, n, D]`` for the token ids ``index: [B, n]``."""
        self.check_input(video)
        if index is None:
            x = self.patch_embed(video)
            return x + self.pos_embed(x.device, x.dtype)
        if self.embed_visible_only:
            x = self.patch_embed(video, index)
        else:  # the official order: embed every token, then gather
            x = gather_tokens(self.patch_embed(video), index)
        return x + gather_tokens(self.pos_embed(x.device, x.dtype), index)

    def forward_features(self, video: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``video: [B, C, T, H, W]``, ``index: [B, n]`` or None -> ``[B, n or N, D]``."""
        x = self.embed(video, index)
        return self.norm(run_blocks(self.blocks, x, self.grad_checkpointing))

    forward = forward_features
