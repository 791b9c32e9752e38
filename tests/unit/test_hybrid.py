"""Labelled hybrids (progressive training's post-pre-training data): label spaces merged by class
name, the target's held-out videos and repeats across sources left out with a reason, and the
loader mapping each source's labels into the merged space and skipping what was left out.

Tiny shards written here (64x48 H.264 videos, 4-frame 32x32 clips), with a distinct source sha256
per video so that repeats and held-out videos are the test's choice.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.data.hybrid import (
    class_key,
    find_exclusions,
    merge_labels,
    read_exclusions,
    sample_ids,
    write_exclusions,
)
from pipeline.data.loader import FinetuneDataConfig, supervised_loader
from pipeline.data.shard_index import ShardIndex
from tests.unit.shard_fixtures import tiny_mp4, write_index, write_tar


def video_sha(n: int) -> str:
    return f"{n:064x}"


def make_set(root: Path, labels: list[str], rows: list[tuple[str, str, int, int]],
             clip: dict[str, tuple[float, float]] | None = None) -> Path:
    """A shard set: ``rows`` of (key, split, label id, video number); one shard per split, 4 per shard."""
    root.mkdir(parents=True)
    by_split: dict[str, list[tuple[str, int, int]]] = collections.defaultdict(list)
    for key, split, label, n in rows:
        by_split[split].append((key, label, n))
    entries = []
    for split, items in sorted(by_split.items()):
        for i in range(0, len(items), 4):
            samples = []
            for key, label, n in items[i:i + 4]:
                start, end = (clip or {}).get(key, (None, None))
                meta = {"uri": f"file:///v/{n}.mp4", "sha256": video_sha(n), "label": labels[label], "split": split,
                        "start": start, "end": end}
                samples.append({"__key__": key, "mp4": tiny_mp4(n % 8), "json": json.dumps(meta).encode(),
                                "cls": str(label).encode()})
            name = f"{split}-{i // 4:06d}.tar"
            write_tar(root / name, samples)
            entries.append((name, split, len(samples)))
    write_index(root, entries, labels)
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two labelled sources and a target. Video numbers: a repeat across the sources (5), one held
    out in the target's val (13) and one in its test (3); a clip of video 7 in both sources at
    different ranges (not a repeat) and at the same range (a repeat)."""
    root = tmp_path_factory.mktemp("hybrid")
    a = make_set(root / "k400", ["playing_guitar", "left", "right"],
                 [(f"a{i}", "train", i % 3, i) for i in range(8)], clip={"a7": (0.0, 1.0)})
    b = make_set(root / "k600", ["Playing Guitar", "Up", "left"],
                 [("b0", "train", 0, 5), ("b1", "train", 1, 13), ("b2", "train", 2, 20), ("b3", "train", 1, 21),
                  ("b4", "train", 0, 7), ("b5", "train", 2, 7), ("b6", "train", 1, 22), ("b7", "train", 0, 23)],
                 clip={"b4": (1.0, 2.0), "b5": (0.0, 1.0)})
    target = make_set(root / "target", ["left", "right"],
                      [("t0", "train", 0, 30), ("v0", "val", 0, 13), ("v1", "val", 1, 31), ("s0", "test", 1, 3)])
    return {"a": a, "b": b, "target": target}


def test_label_spaces_merge_by_normalised_class_name():
    space = merge_labels([["playing_guitar", "left", "right"], ["Playing Guitar", "Up", "left"]])
    assert space.names == ("left", "playing_guitar", "right", "Up")  # by normalised name; first spelling kept
    assert space.maps == ((1, 0, 2), (1, 3, 0))
    assert class_key(" Playing-guitar ") == class_key("playing_guitar") == "playing guitar"
    with pytest.raises(DataError, match=r"data\.sources\[1\] has classes that differ only in case") as err:
        merge_labels([["a"], ["Left", "left"]])
    assert "\n" not in str(err.value)


def test_sample_ids_read_the_json_members(sets):
    index = ShardIndex.load(str(sets["a"]))
    ids = [sid for shard in index.shards for sid in sample_ids(shard)]
    assert [s.key for s in ids] == [f"a{i}" for i in range(8)]
    assert ids[3].sha256 == video_sha(3) and (ids[7].start, ids[7].end) == (0.0, 1.0) and ids[0].start is None


def test_held_out_videos_and_repeats_are_left_out_with_a_reason(sets, tmp_path):
    sources = [ShardIndex.load(str(sets["a"])), ShardIndex.load(str(sets["b"]))]
    found = find_exclusions(sources, "train", [(ShardIndex.load(str(sets["target"])), "val+test")])
    assert found.keys == {0: {"a3"}, 1: {"b0", "b1", "b5"}}
    reasons = {r["key"]: r["reason"] for r in found.records}
    assert reasons["a3"].startswith("held out: the same video is in ") and reasons["a3"].endswith("target test")
    assert reasons["b1"].endswith("target val")
    assert reasons["b0"].startswith("repeat of ") and reasons["b0"].endswith("a5")  # same video, first kept
    assert reasons["b5"].endswith("a7")  # the same clip range of video 7; b4 (another range) is kept
    assert found.held_out_videos == 3 and found.count == 4
    assert found.summary().startswith("4 training samples left out: 2 of videos held out for validation/test")
    # Without held-out shard sets only the repeats go; val alone keeps the test video.
    assert find_exclusions(sources, "train").keys == {1: {"b0", "b5"}}
    val_only = find_exclusions(sources, "train", [(ShardIndex.load(str(sets["target"])), "val")])
    assert val_only.keys == {1: {"b0", "b1", "b5"}}
    # The list the driver writes is what every rank reads back, per source.
    write_exclusions(str(tmp_path), found)
    assert read_exclusions(str(tmp_path), [str(sets["a"]), str(sets["b"])]) == {0: {"a3"}, 1: {"b0", "b1", "b5"}}
    with pytest.raises(DataError, match=r"names .*k400, which is not one of data\.sources"):
        read_exclusions(str(tmp_path), [str(sets["b"])])
    with pytest.raises(DataError, match=r"is missing: the job's driver writes it"):
        read_exclusions(str(tmp_path / "elsewhere"), [str(sets["a"])])


def test_loader_maps_labels_into_the_merged_space_and_skips_what_was_left_out(sets):
    cfg = FinetuneDataConfig(sources=(str(sets["a"]), str(sets["b"])), num_frames=4, sampling_rate=2, input_size=32,
                             repeated_aug=1, batch_size=2, num_workers=0, shuffle_buffer=4, augment="multiscale",
                             scales=(1.0,))
    exclude = {0: frozenset({"a3"}), 1: frozenset({"b0", "b1", "b5"})}
    loader = supervised_loader(cfg, exclude=exclude)
    assert loader.num_samples == 12 and len(loader) == 6  # 16 samples, 4 left out
    assert loader.label_space.names == ("left", "playing_guitar", "right", "Up")
    batches = [b for _, b in zip(range(18), loader.forever())]  # 3 epochs: sources are drawn by weight per slot
    labels = {k: int(v) for b in batches for k, v in zip(b["keys"], b["label"])}
    assert len(labels) == 12 and not set(labels) & {"a3", "b0", "b1", "b5"}
    # a*: playing_guitar, left, right by i % 3; b*: Playing Guitar, Up, left, all in the merged ids
    merged = {"playing_guitar": 1, "left": 0, "right": 2, "Up": 3}
    a_names, b_names = ["playing_guitar", "left", "right"], ["playing_guitar", "Up", "left"]
    b_label = {"b2": 2, "b3": 1, "b4": 0, "b6": 1, "b7": 0}
    for key, label in labels.items():
        want = a_names[int(key[1]) % 3] if key.startswith("a") else b_names[b_label[key]]
        assert label == merged[want], (key, label, want)
    assert loader.stats.errors == 0 and loader.stats.samples_ok == 36
    # Without the exclusions every sample comes, and a single labelled set keeps its own ids.
    assert supervised_loader(cfg).num_samples == 16
    single = supervised_loader(FinetuneDataConfig(**{**vars(cfg), "sources": (), "shards": str(sets["b"])}))
    assert single.label_space is None
    assert {k: int(v) for b in single for k, v in zip(b["keys"], b["label"])}["b1"] == 1  # "Up" in k600's own ids


def test_the_driver_lists_what_it_leaves_out_and_refuses_too_little_left(sets, tmp_path, capsys):
    """jobs.finetune's driver side on a labelled hybrid, before Ray: the merged classes become the head,
    the list is written to the run folder, and a hybrid with less than one global batch left is one line."""
    from jobs import finetune as finetune_job
    from pipeline.core.config import load_config
    from pipeline.train.job_configs import FinetuneConfig
    from pipeline.train.supervised import write_left_out

    sets_ = [f"data.sources={sets['a']},{sets['b']}", f"data.exclude_shards={sets['target']}", "finetune.val_split=",
             "model.init=random", "model.name=vit_tiny", "model.num_frames=4", "model.img_size=32",
             f"run.output={tmp_path}", "run.name=pp", "tracking.enabled=false", "data.batch_size=2",
             "data.repeated_aug=1", "scaling.num_workers=2"]
    cfg = finetune_job.prepare(load_config(FinetuneConfig, None, sets_))
    assert cfg.model.num_classes == 4 and "4 classes merged by name from 2 labelled shard sets" in capsys.readouterr().out
    found = write_left_out(cfg)
    lines = (tmp_path / "pp" / "excluded_samples.jsonl").read_text().splitlines()
    assert found.count == len(lines) == 4
    with pytest.raises(DataError, match=r"= 16 clips per step, but split 'train' of the training data once 4 "
                                        r"samples are left out has 12 samples") as err:
        write_left_out(load_config(FinetuneConfig, None, [*sets_, "data.batch_size=8"]))
    assert "\n" not in str(err.value)
