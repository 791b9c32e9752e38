"""The VideoMAE V2 fine-tuning augmentation (pipeline.video.augment): shapes and dtype, one op sequence
for every frame of a clip, seeded determinism, erasing probability, PIL parity of the RandAugment
ops, the official RandAugment policy, and that validation / evaluation views stay unaugmented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from pipeline.data import decoding
from pipeline.data.loader import FinetuneDataConfig, supervised_loader
from pipeline.data.shard_index import RawSample
from pipeline.train.job_configs import FinetuneConfig
from pipeline.video import augment as A
from pipeline.video.augment import FinetuneTransform, parse_rand_augment, sample_ops
from pipeline.video.decode import open_video
from pipeline.video.sampling import official_clip_indices
from pipeline.video.transforms import TestTransform
from tests.unit.shard_fixtures import make_shards, sample


def frames(t: int = 4, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, C] with structure (gradients) and noise, distinct per frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(t):
        img = np.stack([(xx * 4 + i * 9) % 256, (yy * 5) % 256, ((xx + yy) * 3 + i) % 256], -1)
        out.append(0.7 * img + 0.3 * rng.integers(0, 256, img.shape))
    return np.stack(out).astype(np.uint8)


def tchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------ the transform


def test_shapes_and_dtype():
    out = FinetuneTransform(size=32).crop(frames(), 0)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()


def test_seeded_determinism():
    t, clip = FinetuneTransform(size=32), frames()
    assert torch.equal(t.crop(clip, 7), t.crop(clip, 7))
    assert torch.equal(t.crop(clip, torch.Generator().manual_seed(7)), t.crop(clip, 7))
    assert sum(not torch.equal(t.crop(clip, 7), t.crop(clip, s)) for s in range(8, 16)) == 8


def test_one_op_sequence_crop_and_flip_for_every_frame_of_a_clip():
    # A clip of one frame repeated: every output frame must be the same, whatever was drawn.
    clip = np.repeat(frames(1), 6, axis=0)
    t = FinetuneTransform(size=24, erase_prob=0.0)
    for seed in range(40):
        out = t.crop(clip, seed)
        assert all(torch.equal(out[0], out[i]) for i in range(1, 6)), seed


def test_ops_on_the_whole_clip_equal_the_ops_frame_by_frame():
    # One call for the clip, yet per-frame statistics (autocontrast, equalize, contrast) stay per frame.
    x = tchw(frames(3))
    g = torch.Generator().manual_seed(1)
    ops = [(name, A._level_arg(name, 7.0, g)) for name in A.RAND_INCREASING_TRANSFORMS]
    for i in range(0, len(ops), 3):  # chains of three
        whole = A.rand_augment(x, ops[i : i + 3])
        one_by_one = torch.cat([A.rand_augment(x[j : j + 1], ops[i : i + 3]) for j in range(3)])
        assert torch.equal(whole, one_by_one), ops[i : i + 3]


def test_erasing_probability_in_expectation_and_one_box_per_clip():
    t = FinetuneTransform(size=16, auto_augment="", erase_prob=0.25, flip=False)
    clip = np.full((2, 20, 20, 3), 200, np.uint8)  # a flat clip stays 200 unless erased
    n, erased = 1200, 0
    for seed in range(n):
        changed = (t.crop(clip, seed) != 200).any(1)  # [T, H, W]
        if changed.any():
            erased += 1
            boxes = [tuple(torch.nonzero(c).amin(0).tolist() + torch.nonzero(c).amax(0).tolist()) for c in changed]
            assert abs(boxes[0][0] - boxes[1][0]) <= 1 and abs(boxes[0][2] - boxes[1][2]) <= 1  # same box (cube)
    assert abs(erased / n - 0.25) < 0.05  # sd 0.0125
    assert not (FinetuneTransform(size=16, auto_augment="", erase_prob=0.0).crop(clip, 3) != 200).any()


def test_erased_noise_is_the_normalised_gaussian():
    x = torch.zeros((4, 3, 64, 64), dtype=torch.uint8)
    A.erase_pixels(x, (0, 0, 64, 64), torch.Generator().manual_seed(0))
    z = (x.float() / 255 - torch.tensor(A.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(A.IMAGENET_STD).view(
        1, 3, 1, 1)
    assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.05  # N(0, 1) in normalised units (clipped tails)
    assert not torch.equal(x[0], x[1])  # fresh noise per frame, as official _erase_cube


def test_views_never_write_into_the_shared_decoded_frames():
    clip = frames(h=32, w=32)
    before = clip.copy()
    # the whole frame at its own size, unflipped: the crop is a view of the frames until erased
    t = FinetuneTransform(size=32, ratio=(1.0, 1.0), scale=(1.0, 1.0), flip=False, auto_augment="", erase_prob=1.0)
    out = t.crop(clip, 0)
    assert (out != tchw(before)).any()  # erased
    assert np.array_equal(clip, before)


def test_random_resized_crop_box_stays_in_range():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        top, left, h, w = A.resized_crop_box(48, 64, (0.08, 1.0), (0.75, 1.3333), g)
        assert 0 <= top <= 48 - h and 0 <= left <= 64 - w and h > 0 and w > 0
        assert 0.08 * 48 * 64 * 0.8 <= h * w <= 48 * 64


# ------------------------------------------------------------------------------------------ RandAugment


def test_official_policy_string():
    spec = parse_rand_augment("rand-m7-n4-mstd0.5-inc1")
    assert (spec.magnitude, spec.num_layers, spec.magnitude_std, spec.increasing) == (7.0, 4, 0.5, True)
    assert spec.transforms == A.RAND_INCREASING_TRANSFORMS and len(spec.transforms) == 15
    assert parse_rand_augment("rand") == A.RandAugmentSpec(10.0, 2, 0.0, False)  # official defaults
    with pytest.raises(ValueError):
        parse_rand_augment("rand-m7-x3")
    with pytest.raises(ValueError):
        FinetuneDataConfig(auto_augment="augmix-m5")


def test_sampled_ops_follow_the_policy():
    spec, g = parse_rand_augment("rand-m7-n4-mstd0.5-inc1"), torch.Generator().manual_seed(0)
    counts, rotations = [], []
    for _ in range(2000):
        ops = sample_ops(spec, g)
        counts.append(len(ops))
        rotations += [arg for name, arg in ops if name == "Rotate"]
    assert max(counts) <= 4 and abs(np.mean(counts) - 2.0) < 0.1  # 4 picks, each kept with p 0.5
    r = np.abs(rotations)
    assert 0 < r.min() and r.max() <= 30 and abs(r.mean() - 21.0) < 0.5  # m7 of 30 degrees, both signs
    assert 0.4 < np.mean(np.array(rotations) > 0) < 0.6


def _official(name: str, img: Image.Image, arg: float | None) -> Image.Image:
    """OpenGVLab/VideoMAEv2 ``dataset/rand_augment.py`` ``NAME_TO_OP[name](img, *level_args, **kwargs)`` with the
    fine-tuning kwargs (``create_random_augment``: resample BICUBIC from ``train_interpolation``, fillcolor
    ``_FILL`` = (128, 128, 128)), transcribed."""
    kw = {"resample": Image.BICUBIC, "fillcolor": (128, 128, 128)}
    w, h = img.size
    base = name.removesuffix("Increasing")
    table = {
        "AutoContrast": lambda: ImageOps.autocontrast(img),
        "Equalize": lambda: ImageOps.equalize(img),
        "Invert": lambda: ImageOps.invert(img),
        "Posterize": lambda: img if arg >= 8 else ImageOps.posterize(img, int(arg)),
        "Solarize": lambda: ImageOps.solarize(img, arg),
        "SolarizeAdd": lambda: img.point([min(255, i + arg) if i < 128 else i for i in range(256)] * 3),
        "Color": lambda: ImageEnhance.Color(img).enhance(arg),
        "Contrast": lambda: ImageEnhance.Contrast(img).enhance(arg),
        "Brightness": lambda: ImageEnhance.Brightness(img).enhance(arg),
        "Sharpness": lambda: ImageEnhance.Sharpness(img).enhance(arg),
        "Rotate": lambda: img.rotate(arg, **kw),
        "ShearX": lambda: img.transform(img.size, Image.AFFINE, (1, arg, 0, 0, 1, 0), **kw),
        "ShearY": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, arg, 1, 0), **kw),
        "TranslateXRel": lambda: img.transform(img.size, Image.AFFINE, (1, 0, arg * w, 0, 1, 0), **kw),
        "TranslateYRel": lambda: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, arg * h), **kw),
    }
    return table[base]()


@pytest.mark.parametrize("name", A.RAND_INCREASING_TRANSFORMS + ("Posterize", "Solarize", "Color", "Sharpness"))
def test_each_op_is_the_official_pil_op_on_every_frame(name):
    x = tchw(frames(3))
    arg = A._level_arg(name, 6.8, torch.Generator().manual_seed(3))
    ours = A.rand_augment(x, [(name, arg)])
    for i in range(3):
        ref = np.asarray(_official(name, Image.fromarray(frames(3)[i]), arg))
        assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), ref), (name, i)


def test_posterize_to_no_bit_is_black_as_official():
    x = tchw(frames(1))
    assert not A.rand_augment(x, [("PosterizeIncreasing", 0)]).any()  # level 10: 4 - 4 = 0 bits kept


# ------------------------------------------------------------------------------------------ the data path


def test_validation_and_evaluation_views_are_not_augmented(tmp_path: Path):
    cfg = FinetuneConfig(data=FinetuneDataConfig(shards=str(tmp_path)))
    assert cfg.data.augment == "official" and cfg.data.erase_prob > 0
    val = dataclasses.replace(cfg.data, split="val", test_num_clips=1, test_num_crops=1)  # as finetune._val_loader
    spec = val.clip_spec()
    assert type(spec.test) is TestTransform
    # a decoded validation sample is the centre window, resized and centre-cropped, the same every time
    raw = RawSample("k", {k: v for k, v in sample("k", 3).items() if k != "__key__"}, "x")
    small = dataclasses.replace(spec, num_frames=4, stride=2,
                                test=TestTransform(size=32, short_side=32, num_crops=1))
    first, again = decoding.test_views(raw, small, True), decoding.test_views(raw, small, True)
    assert torch.equal(first.video, again.video)
    with open_video(raw.members["mp4"]) as reader:
        expected = small.test.crops(reader.get(official_clip_indices(reader.num_frames, 4, 2, None)))
    assert torch.equal(first.video, expected.permute(0, 2, 3, 4, 1))  # handed on channels last


def test_finetune_batches_with_the_official_augmentation(tmp_path: Path):
    make_shards(tmp_path, [3, 3])
    cfg = FinetuneDataConfig(shards=str(tmp_path), num_frames=4, sampling_rate=2, input_size=32, repeated_aug=2,
                             batch_size=4, num_workers=0, shuffle_buffer=4, flip=True)
    batch = next(iter(supervised_loader(cfg)))
    assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["video"].dtype == torch.uint8
    assert batch["label"].shape == (4,)
    # training frames: the official window (linspace over 4 x 2 frames: steps 2, 3, 2), not the stride sampler's
    assert cfg.clip_spec().sampling == "official"
    assert all(torch.diff(row).tolist() == [2, 3, 2] for row in batch["frame_indices"])
    multiscale = dataclasses.replace(cfg, augment="multiscale")
    assert type(multiscale.clip_spec().train).__name__ == "TrainTransform"
