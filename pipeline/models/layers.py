"""Building blocks of the video ViT: tubelet embedding, sin-cos positions, attention, block.

Parameter names match the official VideoMAE code (``proj``, ``qkv``, ``q_bias``, ``v_bias``,
``norm1``, ``mlp.fc1``, ``gamma_1`` ...), so checkpoints map with prefixes only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttnImpl = Literal["sdpa", "eager"]


def sincos_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed sin-cos table ``[1, N, D]`` (float32), equal to the official ``get_sinusoid_encoding_table``.

    The official table is 1-D over the t-major token index (not a factorised 3-D one); matching
    it exactly keeps public checkpoints valid. Computed in float64 as the numpy original.
    """
    pos = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)  # [N, 1]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


class SinCosPosEmbed(nn.Module):
    """Fixed positions, computed on first use per device and never saved or cast.

    Not a buffer on purpose: the official checkpoints do not contain it, a ``.bfloat16()`` of the
    model (DeepSpeed bf16) must not round it, and ``meta`` construction must not need it.

    At another frame count or size the table is the one of the new grid, never a resized 16 x 224
    one: that is what official fine-tuning ends up with (its "interpolate position embedding" step
    is an identity or drops the result for these fixed tables; see
    :func:`pipeline.models.weights.pos_embed_note`).
    """

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_tokens, self.dim = num_tokens, dim
        self._cache: dict[torch.device, torch.Tensor] = {}

    def forward(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``[1, N, D]`` in ``dtype`` on ``device``."""
        if device not in self._cache:
            self._cache[device] = sincos_table(self.num_tokens, self.dim).to(device)
        return self._cache[device].to(dtype)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, dim={self.dim}"


def patchify_video(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, N, C*tubelet*p*p]`` in Conv3d weight order (c, t, h, w), t-major N."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # b, t', h', w', c, pt, ph, pw
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), c * tubelet * patch * patch)


class PatchEmbed(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, p, p). ``[B, C, T, H, W] -> [B, N, D]``."""

    def __init__(self, dim: int, patch_size: int, tubelet_size: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=k, stride=k)

    def forward(self, video: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens ``[B, N, D]``, or only ``index`` (``[B, n]`` token ids) as ``[B, n, D]``.

        A non-overlapping Conv3d is a matmul over patches; embedding only the visible patches
        skips 90% of this layer during pre-training.
        """
        if index is None:
            return self.proj(video).flatten(2).transpose(1, 2)
        patches = patchify_video(video, self.tubelet_size, self.patch_size)  # [B, N, K]
        patches = patches.gather(1, index.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention with the official qkv bias (``q_bias``, ``v_bias``; k bias is 0).

    ``attn_impl="sdpa"`` uses ``scaled_dot_product_attention`` (flash / memory-efficient kernels
    on GPU, fused on CPU); ``"eager"`` is the plain softmax reference.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_impl: AttnImpl = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, N, D] -> [B, N, D]``."""
        b, n, d = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h, N, d/h]
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = attn @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Adapter(nn.Module):
    """AdaptFormer bottleneck (Chen et al. 2022): ``scale * up(relu(down(x)))``, run in parallel to the MLP.

    The up-projection starts at zero, so a model with fresh adapters computes exactly what the
    model without them did; adapter tuning then trains only these (and the head) on a frozen encoder.
    """

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.up = nn.Linear(bottleneck, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AdaptFormer init (model-wide init functions run first, so models call this again after them)."""
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scale


def reset_adapters(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Adapter):
            module.reset_parameters()


class Block(nn.Module):
    """Pre-norm transformer block with optional layer scale (``gamma_1``/``gamma_2``) and an optional
    AdaptFormer adapter parallel to the MLP (``adapter_dim > 0``). ``[B, N, D]``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, qkv_bias: bool = True, drop_path: float = 0.0,
                 layer_scale_init: float = 0.0, attn_impl: AttnImpl = "sdpa", norm_eps: float = 1e-6,
                 adapter_dim: int = 0, adapter_scale: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_impl)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim)
        self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        self.adapter = Adapter(dim, adapter_dim, adapter_scale) if adapter_dim > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        x = x + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        out = x + self.drop_path(m if self.gamma_2 is None else self.gamma_2 * m)
        return out if self.adapter is None else out + self.adapter(x)


def init_linear_xavier(module: nn.Module) -> None:
    """Official pre-training init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_linear_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """Official fine-tuning init: timm's truncated normal (bounds ±2 absolute, as the original)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic depth, 0 at the first block (official rule)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


__all__ = ["Attention", "AttnImpl", "Block", "DropPath", "Mlp", "PatchEmbed", "SinCosPosEmbed",
           "drop_path_rates", "init_linear_trunc_normal", "init_linear_xavier", "patchify_video",
           "sincos_table"]
