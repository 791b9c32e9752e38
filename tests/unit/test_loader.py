"""The WebDataset loader: shapes, masks, repeated views, determinism, rank/worker split, equal steps,
exact resume, error counting and bounds, labels, evaluation views, and shards on a local S3 endpoint.

Everything runs on tiny shards written in the test (64x48 videos, 4-frame 32x32 clips).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import random
import warnings
from pathlib import Path

import pytest
import torch

from pipeline.core.errors import DataError
from pipeline.data import streams
from pipeline.data.loader import FinetuneDataConfig, TrainDataConfig, eval_loader, pretrain_loader, supervised_loader
from pipeline.data.masking import MaskConfig, token_grid
from pipeline.data.shard_index import ShardIndex, Unit, assign_units, plan_units
from tests.unit.shard_fixtures import corrupt_header, make_shards, sample, truncate, write_index, write_tar

GRID = token_grid(4, 32, 16, 2)  # (2, 2, 2): 8 tokens


def config(root: Path, **kw: object) -> FinetuneDataConfig:
    base = dict(shards=str(root), num_frames=4, sampling_rate=2, input_size=32, repeated_aug=2, batch_size=4,
                num_workers=0, shuffle_buffer=4, error_check_after=10)
    base.update(kw)
    return FinetuneDataConfig(**base)  # type: ignore[arg-type]


def run(loader, n: int | None = None) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if n is not None and len(out) == n:
            break
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for name in ("video", "enc_mask", "dec_mask", "label", "frame_indices"):
            assert torch.equal(x[name], y[name]), name


@pytest.fixture(scope="module")
def even(tmp_path_factory) -> tuple[Path, list[str]]:
    """8 shards x 3 labelled samples."""
    root = tmp_path_factory.mktemp("even")
    return root, make_shards(root, [3] * 8)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("uneven")
    return root, make_shards(root, [7, 1, 2, 5])


# ------------------------------------------------------------------------------------------ index


def test_index_errors_are_clear(tmp_path, even):
    with pytest.raises(DataError, match="no shard index"):
        ShardIndex.load(str(tmp_path / "nothing"))
    with pytest.raises(DataError, match="data.shards is empty"):
        ShardIndex.load("")
    with pytest.raises(DataError, match=r"no 'val' split \(splits: train\)"):
        ShardIndex.load(str(even[0])).split("val")
    write_index(tmp_path, [("train-000000.tar", "train", 0)])
    with pytest.raises(DataError, match="has no samples"):
        pretrain_loader(config(tmp_path), MaskConfig(), GRID)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed"):
        ShardIndex.load(str(tmp_path))


def test_a_plus_joined_split_is_the_union_in_index_order(tmp_path):
    write_index(tmp_path, [("u-0.tar", "unlabelled", 3), ("t-0.tar", "train", 2), ("v-0.tar", "val", 1),
                           ("u-1.tar", "unlabelled", 4)])
    index = ShardIndex.load(str(tmp_path))
    assert [s.name for s in index.split("unlabelled+train")] == ["u-0.tar", "t-0.tar", "u-1.tar"]
    assert index.num_samples("train+unlabelled") == 9 and index.num_samples("val") == 1
    with pytest.raises(DataError, match=r"no 'test' split \(splits: train, unlabelled, val\)"):
        index.split("train+test")


def test_units_partition_and_balance():
    from pipeline.data.shard_index import ShardInfo

    shards = [ShardInfo(f"s{i}", f"/x/s{i}", "train", n) for i, n in enumerate([7, 1, 2, 5, 3])]
    deal = assign_units(plan_units(shards, 2), 2, random.Random(0))
    assert sorted(u.shard.name for part in deal for u in part) == sorted(s.name for s in shards)
    loads = [sum(u.expected for u in part) for part in deal]
    assert max(loads) - min(loads) <= 2  # 18 samples: LPT gives 9/9 or 10/8
    # fewer shards than readers: strided slices, every sample in exactly one slice
    sliced = plan_units(shards[:2], 6)
    assert {u.num_slices for u in sliced} == {3}
    assert sum(u.expected for u in sliced) == 8 and all(u.expected > 0 for u in sliced)
    assert Unit(shards[0], 1, 3).expected == len([1, 4])


# ------------------------------------------------------------------------------------------ batches


def test_pretrain_batch_shapes_and_masks(even):
    root, _ = even
    loader = pretrain_loader(config(root, batch_size=6, repeated_aug=3), MaskConfig(), GRID)
    batch = next(iter(loader))
    assert batch["video"].shape == (6, 4, 32, 32, 3) and batch["video"].dtype == torch.uint8  # [B, T, H, W, C]
    assert batch["video"].is_contiguous()
    assert batch["label"].dtype == torch.long and batch["label"].shape == (6,)
    assert batch["frame_indices"].shape == (6, 4)
    enc, dec = batch["enc_mask"], batch["dec_mask"]
    assert enc.shape == dec.shape == (6, 8) and enc.dtype == dec.dtype == torch.bool
    # tube: int(0.9 * 4) of the 4 spatial positions masked in each of the 2 temporal slots
    assert (enc.sum(1) == 2 * int(0.9 * 4)).all()
    assert torch.equal(enc.view(6, 2, 4)[:, 0], enc.view(6, 2, 4)[:, 1])
    assert (dec.sum(1) == 4).all()  # running cell at 0.5: half the tokens dropped
    assert set(batch["stats"]) >= {"samples_ok", "decode_errors", "shard_errors", "samples_lost"}
    assert "_position" not in batch


def test_batches_ship_uint8_a_quarter_of_float32(even):
    """Pre-training, fine-tuning and evaluation batches carry uint8 video: 1 byte a value through the
    workers' shared memory, a quarter of the float32 clips shipped before; and jobs.plan's bytes
    per clip (its /dev/shm figures) are exactly what a real batch's tensors hold."""
    from jobs.plan import eval_video_bytes, train_clip_bytes

    root, _ = even
    cfg = config(root, batch_size=4, repeated_aug=2, test_num_clips=2, test_num_crops=3)
    float32_clip = 4 * 3 * 4 * 32 * 32  # what a normalised float32 [C, T, S, S] clip took
    pre = next(iter(pretrain_loader(cfg, MaskConfig(), GRID)))
    sup = next(iter(supervised_loader(cfg)))
    ev = next(iter(eval_loader(cfg)))
    for batch, views in ((pre, 1), (sup, 1), (ev, 6)):
        assert batch["video"].dtype == torch.uint8
        assert batch["video"].nbytes / (len(batch["keys"]) * views) == float32_clip / 4
    tensor_bytes = lambda b: sum(v.nbytes for v in b.values() if isinstance(v, torch.Tensor))  # noqa: E731
    assert tensor_bytes(pre) == 4 * train_clip_bytes(cfg, tokens=8)  # GRID has 8 tokens
    assert tensor_bytes(sup) == 4 * train_clip_bytes(cfg)
    assert tensor_bytes(ev) == len(ev["keys"]) * eval_video_bytes(cfg, views=6)


def test_pinned_memory_exactly_when_cuda_is_present(even, monkeypatch):
    """The rank's DataLoaders (training and evaluation) ask for pinned memory iff CUDA is present.

    Stand-in for a GPU node: the loader reads ``torch.cuda.is_available()`` when it builds its
    DataLoader, and on a GPU node that returns True; patched to True here, the same code path
    runs and the DataLoader records ``pin_memory=True`` (this CPU-only torch then skips the
    pinning itself, as it finds no accelerator, so the batches still flow and are checked).
    """
    from torch.utils.data import DataLoader

    from pipeline.data import loader as loader_module

    requested = []

    class Recording(DataLoader):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            requested.append(self.pin_memory)

    monkeypatch.setattr(loader_module, "DataLoader", Recording)
    root, _ = even
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")
            assert next(iter(pretrain_loader(config(root, num_workers=1), MaskConfig(), GRID)))["video"].dtype == torch.uint8
            assert next(iter(eval_loader(config(root))))["video"].dtype == torch.uint8
    assert requested == [False, False, True, True]


def test_views_share_frames_but_not_crops(even):
    root, _ = even
    batches = run(pretrain_loader(config(root, batch_size=4, repeated_aug=4), MaskConfig(), GRID))
    differing = 0
    for b in batches:  # batch_size == k: one video per batch
        assert len(set(b["keys"])) == 1
        assert (b["frame_indices"] == b["frame_indices"][0]).all()
        differing += any(not torch.equal(b["video"][0], b["video"][v]) for v in range(1, 4))
    assert differing >= len(batches) - 1  # 4 identical random crops of one clip is very unlikely


def test_deferred_crops_are_the_train_transform_crops():
    """train_views draws the crop boxes and leaves the resize to the batch, which writes the views
    straight into their slots: the values are TrainTransform.crop's (the resize before deferring),
    bit for bit."""
    from pipeline.data import decoding
    from pipeline.data.shard_index import RawSample
    from pipeline.video.decode import decode_frames
    from pipeline.video.transforms import to_thwc

    s = sample("k", 0)
    raw = RawSample("k", {"mp4": s["mp4"], "json": s["json"], "cls": s["cls"]}, "x", pass_index=2)
    spec = TrainDataConfig(shards=".", num_frames=7, sampling_rate=2, input_size=32,
                           repeated_aug=5).clip_spec()  # the pre-training crop
    views = decoding.train_views(raw, spec, 7, 1, False)
    assert isinstance(views.video, decoding.DeferredCrops) and len(views.video) == 5
    frames = decode_frames(s["mp4"], views.frames.numpy())
    gens = [torch.Generator().manual_seed(decoding.seed_of(7, 1, "k", 2, v)) for v in range(5)]
    eager = [to_thwc(spec.train.crop(frames, g)) for g in gens]
    assert len({(b.w, b.h) for b in views.video.boxes}) > 1  # several scales (some need no resize at 32)
    assert all(torch.equal(a, b) for a, b in zip(views.video, eager))
    slots = torch.zeros(5, *views.view_shape, dtype=torch.uint8)
    for v, slot in zip([3, 0, 4, 1, 2], slots):
        views.write(v, slot)
    assert torch.equal(slots, torch.stack([eager[v] for v in [3, 0, 4, 1, 2]]))
    # One view of a clip 3x its size: resized now, not held until the batch (the same values)
    one = decoding.train_views(raw, dataclasses.replace(spec, views=1), 7, 1, False)
    assert isinstance(one.video, tuple) and torch.equal(one.video[0], eager[0])


def test_crops_on_the_device_are_the_loaders_crops(even):
    """data.crop_on = "device": the batch ships each decoded clip once and a box per view, and
    batch_video cuts and resizes them where the model runs (here the CPU, standing for the GPU: the
    same float32 interpolate the GPU runs, since GPUs resize no uint8). Everything else in the batch
    is the loader-side batch's; the views are its views within 1 level of 255 (the loader's uint8
    resize rounds in fixed point), flips included, across batches that split a clip's views."""
    from pipeline.train.batch import batch_video

    root, _ = even
    base = dict(shards=str(root), num_frames=4, sampling_rate=2, input_size=32, repeated_aug=3, batch_size=4,
                num_workers=0, shuffle_buffer=4, flip=True)
    loader_side = run(pretrain_loader(TrainDataConfig(**base), MaskConfig(), GRID), 6)
    device_side = run(pretrain_loader(TrainDataConfig(**base, crop_on="device"), MaskConfig(), GRID), 6)
    flips = 0
    for a, b in zip(loader_side, device_side):
        assert "video" not in b and a["keys"] == b["keys"]
        for name in ("enc_mask", "dec_mask", "label", "frame_indices"):
            assert torch.equal(a[name], b[name]), name
        clips, boxes = b["clips"], b["boxes"]
        assert clips.dtype == torch.uint8 and clips.shape[0] == len(set(boxes[:, 0].tolist())) <= 4
        flips += int(boxes[:, 5].sum())
        views = batch_video(b, "cpu")
        assert views.shape == a["video"].shape and views.dtype == torch.uint8
        diff = (views.int() - a["video"].int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.25, (diff.max(), diff.float().mean())  # measured ~0.18
    assert flips > 0  # the flip path ran
    # from a DataLoader worker process too (the batch's ints and bools travel with its tensors)
    worker_side = run(pretrain_loader(TrainDataConfig(**{**base, "num_workers": 1}, crop_on="device"), MaskConfig(),
                                      GRID), 1)[0]
    assert batch_video(worker_side, "cpu").shape == loader_side[0]["video"].shape
    with pytest.raises(ValueError, match=r"data\.crop_on='device' resizes the multi-scale crop .* set data\.augment"):
        config(root, crop_on="device")  # fine-tuning's official augmentation runs on the loader
    assert config(root, crop_on="device", augment="multiscale").clip_spec().crop_on == "device"


def test_batches_hold_each_clips_views_in_order(even, monkeypatch):
    """Batch slots are the views of the decoded clips in order (v = 0..k-1 per clip, a clip's views
    split over two batches when k does not divide the batch)."""
    from pipeline.data.decoding import DeferredCrops

    made = []
    real = streams.train_views
    monkeypatch.setattr(streams, "train_views", lambda raw, *a: made.append(real(raw, *a)) or made[-1])
    root, _ = even
    grid = token_grid(6, 32, 16, 2)
    cfg = TrainDataConfig(shards=str(root), num_frames=6, sampling_rate=2, input_size=32, repeated_aug=3,
                          batch_size=4, num_workers=0, shuffle_buffer=4)
    batches = run(pretrain_loader(cfg, MaskConfig(), grid), 4)
    assert all(isinstance(tv.video, DeferredCrops) for tv in made)
    video = torch.cat([b["video"] for b in batches])
    expected = [tv.video[v] for tv in made for v in range(3)][: len(video)]
    assert len(video) == 16 and all(torch.equal(a, b) for a, b in zip(video, expected))


def test_shard_metadata_replaces_the_per_sample_probe(monkeypatch):
    """A sample whose .json holds the probe jobs.shard stored is opened without probing it again (same
    views as a probed one); a sample whose .json lacks fields is still probed."""
    from pipeline.data import decoding
    from pipeline.data.shard_index import RawSample
    from pipeline.video import decode
    from pipeline.video.probe import probe

    s = sample("k", 0)
    stored = json.dumps(probe(s["mp4"]).to_dict()).encode()
    full = RawSample("k", {"mp4": s["mp4"], "json": stored, "cls": s["cls"]}, "x")
    partial = RawSample("k", {"mp4": s["mp4"], "json": s["json"], "cls": s["cls"]}, "x")
    spec = config(Path(".")).clip_spec()
    probed = decoding.train_views(partial, spec, 0, 0, False)
    calls = []
    monkeypatch.setattr(decode, "probe", lambda *a, **k: calls.append(1) or probe(*a, **k))
    stated = decoding.train_views(full, spec, 0, 0, False)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(stated.video, probed.video))
    assert stated.video[0].dtype == torch.uint8
    decoding.train_views(partial, spec, 0, 0, False)
    assert calls == [1]


def test_deterministic_given_seed(even):
    root, _ = even
    first = run(pretrain_loader(config(root), MaskConfig(), GRID))
    again = run(pretrain_loader(config(root), MaskConfig(), GRID))
    assert_same_batches(first, again)
    other = run(pretrain_loader(config(root, seed=1), MaskConfig(), GRID))
    assert [b["keys"] for b in other] != [b["keys"] for b in first]


def test_epochs_differ_and_resume_across_epoch_boundary(even):
    root, _ = even
    cfg = config(root, batch_size=8, repeated_aug=3)
    loader = pretrain_loader(cfg, MaskConfig(), GRID)
    e0, e1 = run(loader), run(loader)
    assert len(e0) == len(e1) == loader.steps_per_epoch == 9 and loader.epoch == 2
    assert [b["keys"] for b in e0] != [b["keys"] for b in e1]
    assert collections.Counter(k for b in e0 for k in b["keys"]) == collections.Counter(
        k for b in e1 for k in b["keys"])  # one pass each: same multiset, new order


# ------------------------------------------------------------------------------------------ distribution


def test_ranks_and_workers_cover_every_sample_once(even):
    root, keys = even
    cfg = config(root, num_workers=2, batch_size=4, repeated_aug=2)
    per_rank = [run(pretrain_loader(cfg, MaskConfig(), GRID, rank=r, world_size=2)) for r in range(2)]
    assert [len(b) for b in per_rank] == [6, 6]  # 24 samples x 2 views / (4 x 2 ranks)
    seen = [collections.Counter(k for b in batches for k in b["keys"]) for batches in per_rank]
    assert not set(seen[0]) & set(seen[1])
    assert seen[0] + seen[1] == collections.Counter({k: 2 for k in keys})


@pytest.mark.parametrize("world_size,workers", [(2, 2), (3, 1)])
def test_equal_steps_with_unequal_shards(uneven, world_size, workers):
    root, keys = uneven
    cfg = config(root, num_workers=workers, batch_size=2, repeated_aug=1)
    steps = 15 // (2 * world_size)
    for rank in range(world_size):
        loader = pretrain_loader(cfg, MaskConfig(), GRID, rank=rank, world_size=world_size)
        assert len(loader) == steps
        for epoch in range(2):
            batches = run(loader)
            assert len(batches) == steps and all(len(b["keys"]) == 2 for b in batches)
            assert set(k for b in batches for k in b["keys"]) <= set(keys)


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("workers,world_size,rank", [(0, 1, 0), (2, 1, 0), (1, 2, 1)])
def test_resume_yields_the_same_next_batches(tmp_path, workers, world_size, rank):
    keys = make_shards(tmp_path, [4, 3, 5, 2])
    # an undecodable video and a garbage shard: positions count failed samples, and errors
    # already counted before the checkpoint are not counted again
    write_tar(tmp_path / "train-000001.tar", [sample("bad0", 0) | {"mp4": b"\x00garbage" * 50}] +
              [sample(k, i) for i, k in enumerate(keys[4:6])])
    (tmp_path / "train-000003.tar").write_bytes(b"not a tar" * 100)
    cfg = config(tmp_path, num_workers=workers, batch_size=4, repeated_aug=3, max_decode_error_fraction=0.5)

    def loader():
        return pretrain_loader(cfg, MaskConfig(), GRID, rank=rank, world_size=world_size)

    full = loader()
    steps = len(full)
    reference, stats = [], []
    for batch in full.forever():
        reference.append(batch)
        stats.append(full.stats.to_dict())
        if len(reference) == 2 * steps:
            break
    for stop in (1, steps // 2 + 1, steps, steps + 3):
        first = loader()
        done = [b for _, b in zip(range(stop), first.forever())]
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        rest = [b for _, b in zip(range(2 * steps - stop), resumed.forever())]
        assert_same_batches(done + rest, reference)
        assert resumed.stats.to_dict() == stats[-1]  # nothing re-counted, nothing missed


def test_resume_skips_without_decoding(even, monkeypatch):
    root, _ = even
    cfg = config(root, batch_size=4, repeated_aug=2)
    first = pretrain_loader(cfg, MaskConfig(), GRID)
    run(first, 10)
    calls = []
    real = streams.train_views
    monkeypatch.setattr(streams, "train_views", lambda raw, *a: calls.append(raw.key) or real(raw, *a))
    resumed = pretrain_loader(cfg, MaskConfig(), GRID)
    resumed.load_state_dict(first.state_dict())
    assert resumed.step == 10
    run(resumed, 1)
    assert len(calls) == 2  # the next batch's two videos only, not the 20 before them


def test_resume_on_another_world_size_carries_clips(even):
    root, _ = even
    cfg = config(root)
    one = pretrain_loader(cfg, MaskConfig(), GRID)
    run(one, 6)  # 24 clips of 48
    two = pretrain_loader(cfg, MaskConfig(), GRID, rank=1, world_size=2)
    two.load_state_dict(one.state_dict())
    assert (two.epoch, two.step) == (0, 3) and len(run(two)) == 3


# ------------------------------------------------------------------------------------------ errors


@pytest.fixture()
def broken(tmp_path) -> tuple[Path, set[str]]:
    """6 shards of 3: (0) a bad video + a wrong-extension sample, (1) a truncated tar, (2) a garbage file,
    (3) a missing file, (4) a garbage member header (tarfile ends there silently), (5) intact."""
    keys = make_shards(tmp_path, [3, 3, 3, 3, 3, 3])
    bad = {"bad_video", "bad_ext"}
    write_tar(tmp_path / "train-000000.tar", [
        sample(keys[0], 0), sample("bad_video", 1) | {"mp4": b"\x00\x00\x00\x18ftypisom" + b"\x17" * 4000},
        {k: v for k, v in sample("bad_ext", 2).items() if k != "mp4"} | {"avi": b"RIFF...."}])
    truncate(tmp_path / "train-000001.tar", 0.5)
    (tmp_path / "train-000002.tar").write_bytes(random.Random(0).randbytes(5000))
    (tmp_path / "train-000003.tar").unlink()
    corrupt_header(tmp_path / "train-000004.tar", 4)  # members: cls json mp4 | cls [json: garbage] ...
    return tmp_path, bad


def test_every_error_is_counted_once_in_a_pass(broken, caplog):
    root, _ = broken
    caplog.set_level(logging.WARNING)
    loader = eval_loader(config(root, max_decode_error_fraction=1.0, test_num_clips=1, test_num_crops=1))
    got = [k for b in loader for k in b["keys"]]
    s = loader.stats
    # 2 bad samples in shard 0, the sample cut short in shard 4; shards 1-4 broken
    assert (s.decode_errors, s.shard_errors) == (3, 4)
    assert s.samples_ok == len(got) and s.seen == 18  # every sample the index promises is accounted for
    from_truncated = s.samples_ok - 5  # the truncated shard may deliver its first samples
    assert 0 <= from_truncated < 3 and s.samples_lost == 10 - from_truncated
    assert "bad_video" in caplog.text and "bad_ext" in caplog.text and "no .mp4 member" in caplog.text
    assert "train-000003.tar" in caplog.text and "train-000002.tar" in caplog.text
    assert "train-000004.tar: truncated: 2 of 3 samples" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_training_skips_bad_samples_and_stops_past_the_bound(broken, workers):
    root, bad = broken
    cfg = config(root, num_workers=workers, max_decode_error_fraction=0.9, repeated_aug=1, batch_size=2)
    loader = pretrain_loader(cfg, MaskConfig(), GRID)
    batches = run(loader)
    assert len(batches) == 9
    assert not {"bad_video", "bad_ext"} & {k for b in batches for k in b["keys"]}
    per_batch = sum(b["stats"]["decode_errors"] + b["stats"]["samples_lost"] for b in batches)
    assert per_batch == loader.stats.errors > 0 and loader.stats.shard_errors >= 3
    with pytest.raises(DataError, match=r"too many data errors: .*> data.max_decode_error_fraction 5.0%") as err:
        run(pretrain_loader(config(root, num_workers=workers, repeated_aug=1, batch_size=2), MaskConfig(), GRID))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_all_broken_fails_fast(tmp_path, workers):
    write_tar(tmp_path / "train-000000.tar", [sample(f"k{i}", i) | {"mp4": b"junk"} for i in range(3)])
    write_index(tmp_path, [("train-000000.tar", "train", 3)])
    loader = pretrain_loader(config(tmp_path, num_workers=workers, error_check_after=1000), MaskConfig(), GRID)
    with pytest.raises(DataError, match="could be used"):
        run(loader)


def test_missing_labels(tmp_path):
    make_shards(tmp_path / "unlabelled", [2, 2], labelled=False)
    with pytest.raises(DataError, match="shards have no labels"):
        supervised_loader(config(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match="shards have no labels"):
        eval_loader(config(tmp_path / "unlabelled"))
    assert (next(iter(pretrain_loader(config(tmp_path / "unlabelled"), MaskConfig(), GRID)))["label"] == -1).all()
    keys = make_shards(tmp_path / "partial", [2, 2])  # the index lists labels, one sample lacks .cls
    write_tar(tmp_path / "partial" / "train-000001.tar", [sample(keys[2], 2), sample(keys[3], 3, label=None)])
    with pytest.raises(DataError, match="has no .cls member"):
        run(supervised_loader(config(tmp_path / "partial", repeated_aug=1, batch_size=1)))


def test_supervised_batches(even):
    root, _ = even
    batch = next(iter(supervised_loader(config(root, repeated_aug=2, batch_size=4, flip=True))))
    assert batch["video"].shape == (4, 4, 32, 32, 3) and "enc_mask" not in batch
    assert batch["label"].tolist()[0] == batch["label"].tolist()[1] >= 0


def test_eval_views_cover_every_sample_once(uneven):
    root, keys = uneven  # 4 shards for 3 ranks x 2 workers: shards are read as strided slices
    cfg = config(root, batch_size=2, num_workers=2, test_num_clips=2, test_num_crops=3)
    seen = []
    for rank in range(3):
        for b in eval_loader(cfg, rank, 3):
            assert b["video"].shape[1:] == (6, 4, 32, 32, 3) and b["label"].shape == (len(b["keys"]),)
            seen += b["keys"]
    assert sorted(seen) == sorted(keys)


# ------------------------------------------------------------------------------------------ s3


def test_s3_shards_stream_through_the_webdataset_opener(even, monkeypatch):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        s3.create_bucket(Bucket="shards")
        root, _ = even
        for f in root.iterdir():
            s3.upload_file(str(f), "shards", f"k400/{f.name}")
        local = run(pretrain_loader(config(root), MaskConfig(), GRID), 3)
        remote = run(pretrain_loader(config(root, shards="s3://shards/k400"), MaskConfig(), GRID), 3)
        assert_same_batches(local, remote)
    finally:
        server.stop()


def test_stated_info_past_the_bomb_limits_is_not_trusted():
    from pipeline.data.decoding import stated_info
    from pipeline.data.shard_index import RawSample

    good = {"num_frames": 16, "fps": 15.0, "duration": 1.07, "width": 64, "height": 48, "codec": "h264",
            "pix_fmt": "yuv420p", "bit_rate": None, "size_bytes": 1000, "rotation": 0, "frames_from": "metadata"}

    def sample(**over: object) -> RawSample:
        return RawSample(key="k", members={"json": json.dumps({**good, **over}).encode()}, shard="s")

    info = stated_info(sample())
    assert info is not None and (info.width, info.height, info.num_frames) == (64, 48, 16)
    for over in ({"width": 60000, "height": 60000}, {"num_frames": 10**9}, {"width": 0}):
        assert stated_info(sample(**over)) is None, over  # the probe, with its limits, decides
    assert stated_info(RawSample(key="k", members={"json": b"{}"}, shard="s")) is None


def test_loader_workers_start_from_a_forkserver(even):
    """Workers are not forked from the training process (its native threads can leave the child
    deadlocked on Python <= 3.11: benchmarks/fork_race.py hung 16 of 3000 forked children, 0 of 3000
    from a forkserver); data.worker_start = "fork" remains available, said by name."""
    from pipeline.data.loader import FORKSERVER_PRELOAD, data_loader
    from pipeline.data.streams import TrainStream

    root, _ = even
    loader = pretrain_loader(TrainDataConfig(shards=str(root), num_frames=4, sampling_rate=2, input_size=32,
                                             repeated_aug=1, batch_size=4, num_workers=1), MaskConfig(), GRID)
    dl = data_loader(TrainStream(loader._plan()), loader.cfg)
    assert dl.multiprocessing_context.get_start_method() == "forkserver"
    assert "pipeline.data.streams" in FORKSERVER_PRELOAD
    assert len(next(iter(dl))["keys"]) == 4  # a worker started that way yields batches
    fork = dataclasses.replace(loader.cfg, worker_start="fork")
    assert data_loader(TrainStream(loader._plan()), fork).multiprocessing_context.get_start_method() == "fork"
    assert data_loader(TrainStream(loader._plan()), dataclasses.replace(loader.cfg, num_workers=0)
                       ).multiprocessing_context is None
