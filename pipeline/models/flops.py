"""Analytic parameter and FLOP counts per clip, for any size, input and mask ratios.

FLOPs follow the fvcore convention of the VideoMAE papers: one multiply-add counts 1 (MACs);
only matmul-like work is counted (patch embedding, linear layers, the two attention matmuls),
not norms, softmax or activations. The paper's convention applies the patch embedding to every
token and the decoder head to the mask tokens only (ViT-B, 16x224, ratios 0.9 / 0.5:
25.87 G with decoder masking vs 35.48 G without). :func:`train_flops_per_clip` converts to
FLOPs (2 per MAC) for a forward + backward step (3x forward), for achieved FLOP/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.sizes import ArchSpec

_CELL = 4


def _block_params(dim: int, mlp: int, qkv_bias: bool, layer_scale: bool) -> int:
    attn = dim * 3 * dim + (2 * dim if qkv_bias else 0) + dim * dim + dim
    ffn = dim * mlp + mlp + mlp * dim + dim
    return attn + ffn + 4 * dim + (2 * dim if layer_scale else 0)


def param_counts(spec: ArchSpec, layer_scale: bool = False, num_classes: int = 0) -> dict[str, int]:
    """``{"encoder", "decoder", "total"}`` parameter counts of the pre-training model
    (or of the classifier when ``num_classes > 0``: then "decoder" holds fc_norm + head)."""
    d = spec.embed_dim
    embed = spec.in_chans * spec.tubelet_size * spec.patch_size**2 * d + d
    blocks = spec.depth * _block_params(d, spec.mlp_dim, spec.qkv_bias, layer_scale)
    if num_classes > 0:
        encoder = embed + blocks
        top = 2 * d + d * num_classes + num_classes
        return {"encoder": encoder, "decoder": top, "total": encoder + top}
    encoder = embed + blocks + 2 * d
    dd = spec.decoder_dim
    decoder = (d * dd + dd + spec.decoder_depth * _block_params(dd, 4 * dd, spec.qkv_bias, layer_scale)
               + 2 * dd + dd * spec.patch_dim + spec.patch_dim)
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def token_counts(spec: ArchSpec, encoder_ratio: float, decoder_ratio: float,
                 encoder_kind: str = "tube") -> dict[str, int]:
    """Tokens per clip: all, encoder-visible, decoder mask tokens (kept positions)."""
    t, h, w = spec.grid
    n = t * h * w
    masked = t * int(encoder_ratio * h * w) if encoder_kind == "tube" else int(encoder_ratio * n)
    kept = masked if decoder_ratio == 0 else n - n * int(_CELL * decoder_ratio) // _CELL
    return {"all": n, "visible": n - masked, "decoder_queries": kept}


def _blocks_macs(tokens: int, dim: int, mlp: int, depth: int) -> int:
    """qkv + proj + MLP linears, plus q@k^T and attn@v."""
    return depth * (tokens * (4 * dim * dim + 2 * dim * mlp) + 2 * tokens * tokens * dim)


@dataclass(frozen=True)
class FlopCount:
    """MACs per clip by part (multiply-adds, fvcore convention)."""

    embed: int
    encoder: int  # embed included
    decoder: int  # encoder_to_decoder, blocks, head
    tokens_encoder: int
    tokens_decoder: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder


def pretrain_macs(spec: ArchSpec, encoder_ratio: float = 0.9, decoder_ratio: float = 0.5,
                  encoder_kind: str = "tube", embed_all_tokens: bool = True) -> FlopCount:
    """MACs of one pre-training forward per clip. ``decoder_ratio = 0`` is V1 (no decoder masking).

    ``embed_all_tokens`` is the paper's convention (and the official code); our model embeds
    only the visible tokens, which ``embed_all_tokens=False`` counts.
    """
    tok = token_counts(spec, encoder_ratio, decoder_ratio, encoder_kind)
    embed = (tok["all"] if embed_all_tokens else tok["visible"]) * spec.embed_dim * spec.patch_dim
    encoder = embed + _blocks_macs(tok["visible"], spec.embed_dim, spec.mlp_dim, spec.depth)
    dd, nd = spec.decoder_dim, tok["visible"] + tok["decoder_queries"]
    decoder = (tok["visible"] * spec.embed_dim * dd + _blocks_macs(nd, dd, 4 * dd, spec.decoder_depth)
               + tok["decoder_queries"] * dd * spec.patch_dim)
    return FlopCount(embed, encoder, decoder, tok["visible"], nd)


def classify_macs(spec: ArchSpec, num_classes: int = 400) -> int:
    """MACs of one classifier forward per clip (all tokens, plus the head)."""
    n = spec.num_tokens
    return (n * spec.embed_dim * spec.patch_dim + _blocks_macs(n, spec.embed_dim, spec.mlp_dim, spec.depth)
            + spec.embed_dim * num_classes)


def train_flops_per_clip(spec: ArchSpec, encoder_ratio: float = 0.9, decoder_ratio: float = 0.5,
                         encoder_kind: str = "tube", embed_all_tokens: bool = False) -> float:
    """FLOPs (2 per MAC) of one pre-training forward + backward (~3x forward) per clip.

    Defaults to what our model executes (visible-only embedding) for achieved FLOP/s.
    """
    macs = pretrain_macs(spec, encoder_ratio, decoder_ratio, encoder_kind, embed_all_tokens).total
    return 3.0 * 2.0 * macs
