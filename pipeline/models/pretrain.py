"""VideoMAE V2 pre-training model: encoder on visible tokens, decoder on cell-kept tokens.

``forward(video, enc_mask, dec_mask)`` composes ``forward_encoder``, ``forward_decoder`` and
``forward_loss`` (the MAE shape). Masks are bool ``[B, N]`` (True = hidden from the encoder /
dropped from the decoder) with a constant count per row, so every gather is dense.

The decoder input is the official one: the ``Nv`` encoder outputs projected to the decoder
width plus their positions, followed by one mask token plus position for *every* position the
decoder keeps (``~dec_mask``, ``Nk`` of them), encoder-visible ones included. The head predicts
``tubelet * p * p * C`` values for the ``Nk`` mask tokens only; the loss averages over those
that are also encoder-masked.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.pixels import IMAGENET_MEAN, IMAGENET_STD
from pipeline.models.hooks import ParamHooks
from pipeline.models.layers import AttnImpl, Block, SinCosPosEmbed, drop_path_rates, init_linear_xavier, reset_adapters
from pipeline.models.sizes import ArchSpec
from pipeline.models.vit import VideoViT, gather_tokens, run_blocks

TARGET_EPS = 1e-6


def mask_to_index(take: torch.Tensor) -> torch.Tensor:
    """Positions of True per row, ascending: ``take: [B, N] bool -> [B, n] long``.

    Raises ValueError unless every row has the same count (the model never pads).
    """
    counts = take.sum(1).tolist()  # one host sync per step, shared by both checks
    if len(set(counts)) > 1:
        raise ValueError(f"every sample must keep the same number of tokens, got counts {sorted(set(counts))}")
    # A stable sort of the 0/1 "not taken" flags lists taken positions first, in token order.
    order = torch.sort((~take).to(torch.uint8), dim=1, stable=True).indices
    return order[:, : counts[0] if counts else 0]


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Official target layout: ``[B, C, T, H, W] -> [B, N, tubelet*p*p, C]`` (t-major N)."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t', h', w', pt, ph, pw, c
    return x.reshape(b, -1, tubelet * patch * patch, c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, tubelet*p*p, C] -> [B, C, T, H, W]``."""
    b, _, _, c = patches.shape
    t, h, w = grid
    x = patches.reshape(b, t, h, w, tubelet, patch, patch, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, t * tubelet, h * patch, w * patch)


class Decoder(nn.Module):
    """``depth`` blocks, LayerNorm and a linear head applied to the last ``num_pred`` tokens."""

    def __init__(self, spec: ArchSpec, drop_path: float, layer_scale_init: float, attn_impl: AttnImpl) -> None:
        super().__init__()
        dim = spec.decoder_dim
        self.blocks = nn.ModuleList(
            Block(dim, spec.decoder_heads, dim * 4, spec.qkv_bias, dpr, layer_scale_init, attn_impl, spec.norm_eps)
            for dpr in drop_path_rates(drop_path, spec.decoder_depth))
        self.norm = nn.LayerNorm(dim, eps=spec.norm_eps)
        self.head = nn.Linear(dim, spec.patch_dim)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, num_pred: int) -> torch.Tensor:
        """``x: [B, Nv + Nk, Dd] -> [B, num_pred, P]``."""
        x = run_blocks(self.blocks, x, self.grad_checkpointing)
        return self.head(self.norm(x[:, x.shape[1] - num_pred:]))


class PretrainModel(ParamHooks, nn.Module):
    """VideoMAE (V1 when ``dec_mask`` is None) / VideoMAE V2 dual-masking pre-training model."""

    def __init__(self, spec: ArchSpec, drop_path: float = 0.0, layer_scale_init: float = 0.0,
                 attn_impl: AttnImpl = "sdpa", embed_visible_only: bool = True,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 normalize_target: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.mean, self.std = mean, std
        self.normalize_target = normalize_target
        self.encoder = VideoViT(spec, drop_path, layer_scale_init, attn_impl, True, embed_visible_only)
        self.encoder_to_decoder = nn.Linear(spec.embed_dim, spec.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, spec.decoder_dim))
        self.decoder_pos = SinCosPosEmbed(spec.num_tokens, spec.decoder_dim)
        self.decoder = Decoder(spec, drop_path, layer_scale_init, attn_impl)
        self.apply(init_linear_xavier)
        reset_adapters(self)
        # As official (models/modeling_pretrain.py, PretrainVisionTransformer.__init__): only the encoder
        # and the decoder apply the xavier init; the top level never calls self.apply(_init_weights), so
        # encoder_to_decoder keeps nn.Linear's default init (kaiming-uniform, a=sqrt(5): U(+-1/sqrt(D))),
        # and mask_token is trunc_normal_(std=.02) truncated at +-std (its trunc_normal_ wrapper).
        self.encoder_to_decoder.reset_parameters()
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    def set_attn_impl(self, impl: AttnImpl) -> None:
        for module in self.modules():
            if hasattr(module, "attn_impl"):
                module.attn_impl = impl

    # ---- the three stages -------------------------------------------------------------------

    def forward_encoder(self, video: torch.Tensor, vis_idx: torch.Tensor) -> torch.Tensor:
        """``video: [B, C, T, H, W]``, ``vis_idx: [B, Nv]`` -> latent ``[B, Nv, D]``."""
        return self.encoder.forward_features(video, vis_idx)

    def forward_decoder(self, latent: torch.Tensor, vis_idx: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """``latent: [B, Nv, D]`` -> predictions ``[B, Nk, P]`` for the decoder-kept positions."""
        x = self.encoder_to_decoder(latent)  # [B, Nv, Dd]
        pos = self.decoder_pos(x.device, x.dtype)  # [1, N, Dd]
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, keep_idx)  # [B, Nk, Dd]
        x = torch.cat([x + gather_tokens(pos, vis_idx), queries], dim=1)
        return self.decoder(x, keep_idx.shape[1])

    def forward_loss(self, video: torch.Tensor, pred: torch.Tensor, keep_idx: torch.Tensor,
                     enc_mask: torch.Tensor) -> torch.Tensor:
        """Masked-mean MSE (fp32) over kept positions that are also encoder-masked. ``pred: [B, Nk, P]``."""
        target = self.targets(video, keep_idx)  # [B, Nk, P] fp32
        weight = enc_mask.gather(1, keep_idx).to(torch.float32)  # [B, Nk]: 1 where the loss counts
        err = (pred.float() - target).pow(2).mean(dim=-1)
        return (err * weight).sum() / weight.sum().clamp(min=1.0)

    def forward(self, video: torch.Tensor, enc_mask: torch.Tensor, dec_mask: torch.Tensor | None = None,
                return_pred: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (scalar fp32); with ``return_pred`` also ``pred [B, Nk, P]`` and ``keep_idx [B, Nk]``."""
        vis_idx, keep_idx = self.token_indices(enc_mask, dec_mask)
        pred = self.forward_decoder(self.forward_encoder(video, vis_idx), vis_idx, keep_idx)
        loss = self.forward_loss(video, pred, keep_idx, enc_mask.to(video.device))
        return (loss, pred, keep_idx) if return_pred else loss

    # ---- masks, targets and pictures ---------------------------------------------------------

    def token_indices(self, enc_mask: torch.Tensor, dec_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vis_idx [B, Nv], keep_idx [B, Nk])``; ``dec_mask=None`` keeps exactly the masked tokens (V1)."""
        n = self.spec.num_tokens
        for name, m in (("enc_mask", enc_mask), ("dec_mask", dec_mask)):
            if m is not None and (m.dtype != torch.bool or m.ndim != 2 or m.shape[1] != n):
                raise ValueError(f"{name} must be bool [B, {n}], got {m.dtype} {list(m.shape)}")
        keep = enc_mask if dec_mask is None else ~dec_mask
        return mask_to_index(~enc_mask), mask_to_index(keep)

    def _pixel_patches(self, video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Un-normalised pixels of the tokens ``index``: ``[B, n, tubelet*p*p, C]`` fp32."""
        patches = patchify(self._unnormalise(video), self.spec.tubelet_size, self.spec.patch_size)
        return patches.gather(1, index[:, :, None, None].expand(-1, -1, *patches.shape[2:]))

    def targets(self, video: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Targets ``[B, n, tubelet*p*p*C]`` (official layout): per-patch, per-channel normalised
        pixels, or with ``normalize_target=False`` the raw 0-1 pixels: the official raw-pixel branch, which
        the official CLI reaches only with ``--normlize_target ""`` (the flag is ``type=bool``, so the
        string ``False`` parses as True and still normalises).
        """
        patches = self._pixel_patches(video, index)
        if not self.normalize_target:
            return patches.flatten(2)
        mean = patches.mean(dim=-2, keepdim=True)
        std = patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        return ((patches - mean) / (std + TARGET_EPS)).flatten(2)

    def reconstruct(self, video: torch.Tensor, pred: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Pixel-space clip ``[B, C, T, H, W]`` (0-1 range): the input, with predicted patches pasted in.

        Normalised predictions are mapped back with the mean/std of the true patch (as the
        official visualisation does); raw-pixel predictions are pasted as they are.
        """
        s = self.spec
        patches = self._pixel_patches(video, keep_idx)  # [B, Nk, K, C]
        pixels = pred.float().view_as(patches)
        if self.normalize_target:
            mean, std = patches.mean(dim=-2, keepdim=True), patches.var(dim=-2, unbiased=True, keepdim=True).sqrt()
            pixels = pixels * (std + TARGET_EPS) + mean
        full = patchify(self._unnormalise(video), s.tubelet_size, s.patch_size)
        full = full.scatter(1, keep_idx[:, :, None, None].expand_as(pixels), pixels)
        return unpatchify(full, s.grid, s.tubelet_size, s.patch_size).clamp(0, 1)

    def _unnormalise(self, video: torch.Tensor) -> torch.Tensor:
        """Undo the ImageNet normalisation in fp32, as the official engine does before targets."""
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.mean, device=video.device).view(shape)
        return video.float() * torch.tensor(self.std, device=video.device).view(shape) + mean


__all__ = ["Decoder", "PretrainModel", "mask_to_index", "patchify", "unpatchify"]
