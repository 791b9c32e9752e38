"""Mixup / CutMix on video batches with label-smoothed soft targets (pure torch).

    mixer = Mixup(MixupConfig(), num_classes=400)
    video, target = mixer(video, label, generator)    # video [B, C, T, H, W], target [B, K] rows sum to 1

Training applies it on the device, to the freshly normalised batch (:func:`pipeline.train.batch.model_input`).
    loss = soft_target_cross_entropy(logits, target)

As timm's ``Mixup`` in batch mode (what VideoMAE fine-tuning uses): one ``lam`` per batch, each
clip mixed with the clip at the mirrored batch position. CutMix cuts one spatial box and pastes
it into every frame (the box is the same over time, as in VideoMAE), and ``lam`` is corrected to
the pasted area so the targets match the pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.core.config import help_field


@dataclass
class MixupConfig:
    """Mixup / CutMix and label smoothing (TOML section ``[mixup]``); VideoMAE fine-tuning defaults."""

    mixup_alpha: float = help_field(0.8, help="Beta(alpha, alpha) of mixup's lam; 0 = no mixup")
    cutmix_alpha: float = help_field(1.0, help="Beta(alpha, alpha) of cutmix's box area; 0 = no cutmix")
    prob: float = help_field(1.0, help="probability that a batch is mixed at all")
    switch_prob: float = help_field(0.5, help="with both on: probability of cutmix instead of mixup")
    label_smoothing: float = help_field(0.1, help="mass spread uniformly over all classes")

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup.mixup_alpha and mixup.cutmix_alpha must be >= 0")
        for name in ("prob", "switch_prob", "label_smoothing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mixup.{name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def smooth_one_hot(label: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``label [B] -> [B, K]``: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K`` elsewhere."""
    off = smoothing / num_classes
    target = torch.full((label.shape[0], num_classes), off, device=label.device)
    return target.scatter_(1, label.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """A box ``(y0, y1, x0, x1)`` of area about ``(1 - lam) * H * W``, centred uniformly (clipped at edges)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator))
    cx = int(torch.randint(0, width, (1,), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """Beta(alpha, alpha) from ``generator`` (torch.distributions takes no generator): Ga / (Ga + Gb)."""
    g = _gamma_seeded(alpha, generator)
    return float(g[0] / (g[0] + g[1]))


def _gamma_seeded(alpha: float, generator: torch.Generator | None, n: int = 2) -> torch.Tensor:
    """Gamma(alpha, 1) samples from ``generator`` (Marsaglia-Tsang; alpha < 1 boosted by U^(1/alpha))."""
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = []
    while len(out) < n:
        x = float(torch.randn(1, generator=generator, dtype=torch.float64))
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand(1, generator=generator, dtype=torch.float64))
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            g = d * v
            if boost:
                g *= float(torch.rand(1, generator=generator, dtype=torch.float64)) ** (1.0 / alpha)
            out.append(max(g, 1e-300))
    return torch.tensor(out, dtype=torch.float64)


class Mixup:
    """Batch-mode mixup / cutmix; ``__call__`` returns the mixed video and soft targets."""

    def __init__(self, cfg: MixupConfig, num_classes: int) -> None:
        self.cfg, self.num_classes = cfg, num_classes
        self.last_lam, self.last_kind = 1.0, "none"

    def sample(self, generator: torch.Generator | None = None) -> tuple[float, str]:
        """``(lam, kind)`` for one batch; kind is ``none``, ``mixup`` or ``cutmix``."""
        cfg = self.cfg
        if not cfg.active or float(torch.rand(1, generator=generator)) >= cfg.prob:
            return 1.0, "none"
        use_cutmix = cfg.cutmix_alpha > 0 and (
            cfg.mixup_alpha <= 0 or float(torch.rand(1, generator=generator)) < cfg.switch_prob)
        alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
        return _beta(alpha, generator), "cutmix" if use_cutmix else "mixup"

    def __call__(self, video: torch.Tensor, label: torch.Tensor, generator: torch.Generator | None = None,
                 inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``video [B, C, T, H, W]``, ``label [B]`` -> mixed video, targets ``[B, K]`` (rows sum to 1).

        ``inplace``: mix into ``video`` itself (a batch just normalised on the device, which no
        one else holds) instead of a copy: one batch-sized buffer less on the GPU.
        """
        lam, kind = self.sample(generator)
        video = video.clone() if kind != "none" and not inplace else video
        flipped = video.flip(0)
        if kind == "mixup":
            video.mul_(lam).add_(flipped, alpha=1.0 - lam)
        elif kind == "cutmix":
            h, w = video.shape[-2:]
            y0, y1, x0, x1 = cutmix_box(h, w, lam, generator)
            video[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)  # the area really pasted
        self.last_lam, self.last_kind = lam, kind
        smooth = self.cfg.label_smoothing
        target = smooth_one_hot(label, self.num_classes, smooth)
        if kind != "none":
            target = lam * target + (1.0 - lam) * target.flip(0)
        return video, target.to(video.device)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k target_k log softmax(logits)_k`` (computed in fp32)."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
