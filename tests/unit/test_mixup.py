"""Mixup / CutMix on video batches: soft targets sum to 1, lam in range, cutmix lam = pasted area."""

from __future__ import annotations

import pytest
import torch

from pipeline.train.mixup import Mixup, MixupConfig, cutmix_box, smooth_one_hot, soft_target_cross_entropy


def _batch(b: int = 6, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, 3, 4, 16, 16), torch.arange(b) % k


def test_smooth_one_hot_rows_sum_to_one() -> None:
    t = smooth_one_hot(torch.tensor([0, 2]), 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.9 + 0.025) and t[0, 1] == pytest.approx(0.025)


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both", "off"])
def test_targets_sum_to_one_and_lam_in_range(kind: str) -> None:
    cfg = MixupConfig(mixup_alpha=0.0 if kind in ("cutmix", "off") else 0.8,
                      cutmix_alpha=0.0 if kind in ("mixup", "off") else 1.0, label_smoothing=0.1)
    mixer, gen = Mixup(cfg, num_classes=5), torch.Generator().manual_seed(0)
    video, label = _batch()
    kinds = set()
    for _ in range(40):
        out, target = mixer(video, label, gen)
        kinds.add(mixer.last_kind)
        assert out.shape == video.shape and target.shape == (6, 5)
        assert torch.allclose(target.sum(1), torch.ones(6), atol=1e-6)
        assert (target >= 0).all()
        assert 0.0 <= mixer.last_lam <= 1.0
        if mixer.last_kind == "none":
            assert out is video
    assert kinds == {"off": {"none"}, "mixup": {"mixup"}, "cutmix": {"cutmix"}, "both": {"mixup", "cutmix"}}[kind]


def test_mixup_pixels_and_targets_use_the_same_lam() -> None:
    mixer = Mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0), num_classes=6)
    video, label = _batch(4, 6)
    out, target = mixer(video, label, torch.Generator().manual_seed(3))
    lam = mixer.last_lam
    assert torch.allclose(out, lam * video + (1 - lam) * video.flip(0), atol=1e-5)
    assert target[0, label[0]] == pytest.approx(lam, abs=1e-6)
    assert target[0, label[-1]] == pytest.approx(1 - lam, abs=1e-6)


def test_cutmix_box_is_the_same_in_every_frame_and_lam_is_its_area() -> None:
    mixer = Mixup(MixupConfig(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0), num_classes=6)
    video = torch.zeros(2, 3, 4, 16, 16)
    video[1] = 1.0
    out, target = mixer(video, torch.tensor([0, 1]), torch.Generator().manual_seed(1))
    pasted = out[0, 0]  # [T, H, W]: clip 0 received clip 1's pixels inside the box
    assert all(torch.equal(pasted[t], pasted[0]) for t in range(4))
    area = float(pasted[0].mean())
    assert mixer.last_lam == pytest.approx(1 - area, abs=1e-6)
    assert target[0, 0] == pytest.approx(1 - area, abs=1e-6) and target[0, 1] == pytest.approx(area, abs=1e-6)


def test_cutmix_box_stays_inside_the_frame() -> None:
    gen = torch.Generator().manual_seed(0)
    for lam in (0.0, 0.3, 0.9, 1.0):
        y0, y1, x0, x1 = cutmix_box(10, 12, lam, gen)
        assert 0 <= y0 <= y1 <= 10 and 0 <= x0 <= x1 <= 12


def test_beta_samples_have_the_right_mean() -> None:
    mixer = Mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0), num_classes=2)
    gen = torch.Generator().manual_seed(0)
    lams = [mixer.sample(gen)[0] for _ in range(2000)]
    assert sum(lams) / len(lams) == pytest.approx(0.5, abs=0.03)
    assert min(lams) < 0.1 and max(lams) > 0.9  # Beta(0.8, 0.8) is U-shaped


def test_soft_target_cross_entropy_matches_hard_labels() -> None:
    logits = torch.randn(5, 7)
    label = torch.randint(0, 7, (5,))
    expected = torch.nn.functional.cross_entropy(logits, label, label_smoothing=0.1)
    got = soft_target_cross_entropy(logits, smooth_one_hot(label, 7, 0.1))
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_mixing_on_the_device_equals_mixing_the_loaders_float_batch() -> None:
    """Fine-tuning: uint8 batch -> model_input (normalise, then mix, on the device) gives the video
    and soft targets that mixing the loader's normalised float32 batch on the CPU gave, bit for bit,
    for unmixed, mixup and cutmix batches (the mixer draws from the same global RNG either way)."""
    from pipeline.core.pixels import normalize_pixels
    from pipeline.train.batch import channels_first, model_input

    mixer = Mixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, label_smoothing=0.1), num_classes=5)
    g = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (6, 4, 16, 16, 3), dtype=torch.uint8, generator=g)  # the loader's [B, T, H, W, C]
    label = torch.arange(6) % 5
    float_batch = normalize_pixels(channels_first(uint8))  # what the loader workers shipped before (bits: test_video_transforms)
    kinds = set()
    for seed in range(12):
        torch.manual_seed(seed)
        old_video, old_target = mixer(float_batch, label)
        kinds.add(mixer.last_kind)
        torch.manual_seed(seed)
        video, target = model_input(uint8, "cpu", torch.float32, mixer, label)
        assert torch.equal(video, old_video) and torch.equal(target, old_target), (seed, mixer.last_kind)
    assert kinds == {"none", "mixup", "cutmix"}
    assert torch.equal(float_batch, normalize_pixels(channels_first(uint8)))  # mixing did not touch the caller's batch
