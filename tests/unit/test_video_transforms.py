"""Clip transforms: VideoMAE multi-scale crop parity, PIL-like resize, determinism, test crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.video.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropParams,
    TestTransform,
    TrainTransform,
    denormalize,
    fixed_crop_offsets,
    multiscale_crop_sizes,
    normalize,
    resized_crop,
    spatial_crop_boxes,
    to_tchw,
    to_thwc,
)


def _clip(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _reference_fill_fix_offset(more_fix_crop: bool, image_w: int, image_h: int, crop_w: int, crop_h: int) -> list:
    """VideoMAE ``GroupMultiScaleCrop.fill_fix_offset``, transcribed."""
    w_step = (image_w - crop_w) // 4
    h_step = (image_h - crop_h) // 4
    ret = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]
    if more_fix_crop:
        ret += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step), (2 * w_step, 0 * h_step),
                (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step), (1 * w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    return ret


@pytest.mark.parametrize("size", [(320, 240, 224, 200), (240, 320, 158, 210), (64, 48, 31, 31), (224, 224, 224, 224)])
@pytest.mark.parametrize("more", [True, False])
def test_fixed_offsets_match_videomae(size: tuple[int, int, int, int], more: bool) -> None:
    offsets = fixed_crop_offsets(*size, more_fix_crop=more)
    assert offsets == _reference_fill_fix_offset(more, *size)
    assert len(offsets) == (13 if more else 5)


def test_multiscale_crop_sizes() -> None:
    # short side 240: int(240 * s) = 240, 210, 180, 158; none within 3 px of 224
    pairs = multiscale_crop_sizes(320, 240, 224)
    sizes = [240, 210, 180, 158]
    expected = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1]
    assert pairs == expected and len(pairs) == 10
    assert (224, 224) in multiscale_crop_sizes(300, 256, 224)  # int(256 * .875) = 224 exactly; 226 would snap too
    assert multiscale_crop_sizes(300, 258, 224)[0][0] == 258 and (224, 224) in multiscale_crop_sizes(300, 258, 224)


def test_train_transform_shape_determinism_and_coverage() -> None:
    clip = _clip(t=3, h=240, w=320)
    t = TrainTransform(size=32)
    out = t(clip, 123)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, t(clip, torch.Generator().manual_seed(123)))
    boxes = [t.sample(240, 320, seed) for seed in range(3000)]
    pairs = multiscale_crop_sizes(320, 240, 32)
    assert {(b.w, b.h) for b in boxes} == set(pairs)  # every scale pair is drawn
    for b in boxes:
        assert (b.x, b.y) in fixed_crop_offsets(320, 240, b.w, b.h)
        assert 0 <= b.x and b.x + b.w <= 320 and 0 <= b.y and b.y + b.h <= 240 and not b.flip
    full = {(b.x, b.y) for b in boxes if (b.w, b.h) == (158, 158)}
    assert full == set(fixed_crop_offsets(320, 240, 158, 158))  # all 13 grid offsets are drawn


def test_same_box_on_every_frame_in_one_op() -> None:
    clip = _clip(t=5, h=60, w=80, seed=1)
    t = TrainTransform(size=24)
    whole = t(clip, 5)
    for i in range(5):
        assert torch.equal(whole[:, i : i + 1], t(clip[i : i + 1], 5))


def test_resize_matches_pil_bilinear() -> None:
    """VideoMAE resizes PIL images (bilinear, which filters when shrinking): antialias=True matches it."""
    clip = _clip(t=2, h=120, w=160, seed=2)
    box = CropParams(x=10, y=5, w=100, h=100)
    ours = resized_crop(to_tchw(clip), box, (37, 37)).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        pil = Image.fromarray(clip[i]).crop((10, 5, 110, 105)).resize((37, 37), Image.BILINEAR)
        assert np.abs(ours[i].astype(int) - np.asarray(pil).astype(int)).max() <= 1


@pytest.mark.parametrize("antialias", [True, False])
def test_resized_crop_into_a_slot_writes_what_it_returns(antialias: bool) -> None:
    """``out=`` (the loader's channels-last batch slots) gets exactly the values returned without it:
    resized straight into the slot, or copied there (flip, crop already at the output size)."""
    x = to_tchw(_clip(t=3, h=60, w=80, seed=4))
    for box in (CropParams(5, 3, 50, 40), CropParams(9, 2, 24, 30), CropParams(5, 3, 50, 40, flip=True),
                CropParams(9, 9, 24, 24), CropParams(0, 0, 80, 60)):
        slot = torch.zeros(3, 24, 24, 3, dtype=torch.uint8)
        got = resized_crop(x, box, (24, 24), antialias, out=slot.permute(0, 3, 1, 2))
        assert got.data_ptr() == slot.data_ptr()
        assert torch.equal(slot, to_thwc(resized_crop(x, box, (24, 24), antialias))), box
    with pytest.raises(ValueError, match="out must be"):
        resized_crop(x, CropParams(5, 3, 50, 40), (24, 24), out=torch.zeros(3, 3, 24, 23, dtype=torch.uint8))


def test_crop_without_resize_is_an_exact_slice_and_flip() -> None:
    clip = _clip(t=2, h=48, w=64, seed=3)
    box = CropParams(x=7, y=3, w=20, h=30)
    out = resized_crop(to_tchw(clip), box, (30, 20)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(out, clip[:, 3:33, 7:27])
    flipped = resized_crop(to_tchw(clip), CropParams(7, 3, 20, 30, flip=True), (30, 20)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(flipped, clip[:, 3:33, 7:27][:, :, ::-1])


def test_flip_is_drawn_when_enabled() -> None:
    t = TrainTransform(size=16, flip=True)
    flips = [t.sample(48, 64, s).flip for s in range(200)]
    assert 60 < sum(flips) < 140


def test_normalize_and_denormalize_round_trip() -> None:
    clip = np.full((2, 4, 4, 3), (255, 128, 0), np.uint8)
    x = normalize(to_tchw(clip))
    assert x.shape == (3, 2, 4, 4)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD)]
    torch.testing.assert_close(x[:, 0, 0, 0], torch.tensor(expected, dtype=torch.float32))
    rnd = _clip(t=3, h=8, w=8, seed=4)
    back = denormalize(normalize(to_tchw(rnd)))
    assert torch.equal(back, torch.from_numpy(rnd))  # [T, H, W, C] again
    batch = torch.stack([normalize(to_tchw(rnd))] * 2)
    assert denormalize(batch).shape == (2, 3, 8, 8, 3)


@pytest.mark.parametrize("h,w", [(48, 64), (64, 48)])
def test_test_transform_three_crops_along_the_long_side(h: int, w: int) -> None:
    clip = _clip(t=2, h=h, w=w, seed=5)
    boxes = spatial_crop_boxes(32, 43, 32, 3) if h < w else spatial_crop_boxes(43, 32, 32, 3)
    longs = [b.x for b in boxes] if h < w else [b.y for b in boxes]
    assert longs == [0, 5, 11]  # int(i * (43 - 32) / 2)
    out = TestTransform(size=32, short_side=32, num_crops=3)(clip)
    assert out.shape == (3, 3, 2, 32, 32)
    assert not torch.equal(out[0], out[2])
    centre = TestTransform(size=24, short_side=32, num_crops=1)(clip)
    assert centre.shape == (1, 3, 2, 24, 24)
    b = spatial_crop_boxes(32, 43, 24, 1)[0] if h < w else spatial_crop_boxes(43, 32, 24, 1)[0]
    # official CenterCrop: int(round((43 - 24) / 2)) = round(9.5) = 10 (half to even), int(round(8 / 2)) = 4
    assert (b.x, b.y) == ((10, 4) if h < w else (4, 10))


def test_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError):
        TrainTransform()(np.zeros((2, 3, 48, 64), np.uint8), 0)  # [T, C, H, W] is not the input layout
    with pytest.raises(ValueError):
        TrainTransform()(np.zeros((2, 48, 64, 3), np.float32), 0)


def _loader_normalised_before(crop: torch.Tensor) -> torch.Tensor:
    """What the loader workers shipped before the uint8 hand-off, as written then: uint8
    ``[T, C, H, W]`` -> float32 ``[C, T, H, W]`` with the ImageNet constants spelled out here."""
    m = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32).view(-1, 1, 1, 1)
    src = crop.permute(1, 0, 2, 3)
    return torch.empty(src.shape, dtype=torch.float32).copy_(src).mul_(1.0 / (s * 255.0)).add_(-m / s)


def test_device_normalisation_equals_the_loaders_bit_for_bit() -> None:
    """model_input(uint8 batch) == the float32 batch the loader normalised before, bit for bit:
    pre-training views [B, T, H, W, C] and evaluation views [B, V, T, H, W, C] (the loader's
    channels-last layout) come out as [B, (V,) C, T, H, W]; and cast to bf16
    it is that batch cast to bf16 (what `.to(device, dtype)` did). On a GPU the same two float32
    IEEE operations run (multiply, add; constants made on the CPU), so the bits are the same there."""
    from pipeline.train.batch import channels_first, model_input

    clip = _clip(t=4, h=48, w=64, seed=3)
    train = TrainTransform(size=32)
    crops = [train.crop(clip, seed) for seed in range(5)]
    batch = torch.stack([to_thwc(c) for c in crops])  # the loader's uint8 collate
    before = torch.stack([_loader_normalised_before(c) for c in crops])
    video, target = model_input(batch, "cpu", torch.float32)
    assert target is None and video.dtype == torch.float32 and torch.equal(video, before)
    assert torch.equal(model_input(batch, "cpu", torch.bfloat16)[0], before.to(torch.bfloat16))
    # evaluation: 2 videos x 3 crops; the crops as TestTransform cut them, normalised the old way
    test = TestTransform(size=32, short_side=32, num_crops=3)
    crops = torch.stack([test.crops(_clip(seed=s)) for s in (4, 5)])
    assert crops.dtype == torch.uint8 and crops.shape == (2, 3, 3, 4, 32, 32)
    views = crops.permute(0, 1, 3, 4, 5, 2)  # as decoding.test_views hands them on: [B, V, T, H, W, C]
    old = torch.stack([torch.stack([_loader_normalised_before(v.permute(1, 0, 2, 3)) for v in video])
                       for video in crops])
    assert torch.equal(model_input(views, "cpu", torch.float32)[0], old)
    assert torch.equal(test(_clip(seed=4)), old[0])  # the float form of TestTransform is unchanged too
    # and it is the textbook (x / 255 - mean) / std, within float32 rounding
    textbook = (channels_first(batch).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    assert torch.allclose(video, textbook, rtol=0, atol=1e-6)


def test_model_input_refuses_a_float_batch() -> None:
    from pipeline.train.batch import model_input

    with pytest.raises(ValueError, match="must be uint8"):
        model_input(torch.zeros(1, 2, 8, 8, 3), "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"\[\.\.\., T, H, W, C\]"):  # channels first: the old layout
        model_input(torch.zeros(1, 3, 2, 8, 8, dtype=torch.uint8), "cpu", torch.float32)


def _official_resize_sizes(im_h: int, im_w: int, size: int) -> tuple[int, int]:
    """OpenGVLab/VideoMAEv2 ``dataset/functional.py`` ``get_resize_sizes`` (validation / test Resize), transcribed."""
    if im_w < im_h:
        ow, oh = size, int(size * im_h / im_w)
    else:
        oh, ow = size, int(size * im_w / im_h)
    return oh, ow


@pytest.mark.parametrize("h,w", [(256, 340), (320, 426), (340, 256), (48, 64), (33, 47)])
def test_test_views_resize_as_official(h: int, w: int) -> None:
    from pipeline.video.transforms import resize_short_side

    x = torch.zeros((1, 3, h, w), dtype=torch.uint8)
    assert tuple(resize_short_side(x, 24).shape[-2:]) == _official_resize_sizes(h, w, 24)
    assert tuple(resize_short_side(x, 224).shape[-2:]) == _official_resize_sizes(h, w, 224)
    assert TestTransform().antialias is False  # cv2 INTER_LINEAR there
