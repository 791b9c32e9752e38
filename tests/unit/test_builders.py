"""Manifest builders on small fabricated label files and empty placeholder videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.data.builders import (
    build_folder,
    build_hmdb51,
    build_kinetics,
    build_ssv2,
    build_ucf101,
    ssv2_label,
)
from pipeline.data.manifest import ManifestEntry


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def rel(entries: list[ManifestEntry], root: Path) -> list[tuple[str, str | None, str | None]]:
    return [(str(Path(e.uri).relative_to(root.resolve())), e.label, e.split) for e in entries]


# --------------------------------------------------------------------------------------------
# Kinetics

KINETICS_CSV = """label,youtube_id,time_start,time_end,split,is_cc
abseiling,aaa,10,20,train,0
"air drumming",bbb,0,10,train,0
abseiling,ccc,5,15,train,0
"air drumming",ddd,30,40,val,0
"""


@pytest.mark.parametrize("layout", ["split", "split/label", "split/label_underscored"])
def test_kinetics_layouts_and_missing(tmp_path, layout):
    root, csv = tmp_path / "k400", tmp_path / "train.csv"
    csv.write_text(KINETICS_CSV)
    for label, yid, s, e, split in [("abseiling", "aaa", 10, 20, "train"), ("air drumming", "bbb", 0, 10, "train"),
                                    ("air drumming", "ddd", 30, 40, "val")]:
        folder = {"split": root / split, "split/label": root / split / label,
                  "split/label_underscored": root / split / label.replace(" ", "_")}[layout]
        touch(folder / f"{yid}_{s:06d}_{e:06d}.mp4")
    result = build_kinetics(root, [csv])
    assert [(Path(e.uri).name, e.label, e.split) for e in result.entries] == [
        ("aaa_000010_000020.mp4", "abseiling", "train"),
        ("bbb_000000_000010.mp4", "air drumming", "train"),
        ("ddd_000030_000040.mp4", "air drumming", "val"),
    ]
    assert [(Path(e.uri).name, e.label) for e in result.missing] == [("ccc_000005_000015.mp4", "abseiling")]
    assert result.stats["missing"] == 1 and result.stats["per_split"] == {"train": 2, "val": 1}
    assert result.classes == ["abseiling", "air drumming"]


def test_kinetics_untrimmed_video_keeps_clip_range(tmp_path):
    root, csv = tmp_path / "k", tmp_path / "a.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,10.0,20.0,validate\n")
    touch(root / "raw" / "aaa.mp4")
    (entry,) = build_kinetics(root, [csv]).entries
    assert (Path(entry.uri).name, entry.split, entry.start, entry.end) == ("aaa.mp4", "val", 10.0, 20.0)


def test_kinetics_test_split_without_labels_and_bad_rows(tmp_path):
    root, csv = tmp_path / "k", tmp_path / "test.csv"
    csv.write_text("youtube_id,time_start,time_end,split\nzzz,0,10,test\n")
    touch(root / "test" / "zzz_000000_000010.mp4")
    assert [(e.label, e.split) for e in build_kinetics(root, [csv]).entries] == [(None, "test")]
    csv.write_text("label,youtube_id,time_start,time_end,split\nx,aaa,ten,20,train\n")
    with pytest.raises(DataError, match=r"test.csv:2: time_start/time_end must be numbers"):
        build_kinetics(root, [csv])
    csv.write_text("label,youtube_id,time_start,time_end,split\n,aaa,0,10,train\n")
    result = build_kinetics(root, [csv])
    assert result.entries == [] and "no label" in result.skipped[0].reason
    csv.write_text("label,id,start\n")
    with pytest.raises(DataError, match="header must hold"):
        build_kinetics(root, [csv])


# --------------------------------------------------------------------------------------------
# Something-Something v2


def test_ssv2_label_matches_official_processing():
    assert ssv2_label("Putting [something] on a surface") == "Putting something on a surface"


def test_ssv2(tmp_path):
    root, ann = tmp_path / "videos", tmp_path / "labels"
    ann.mkdir()
    (ann / "labels.json").write_text(json.dumps({"Putting something on a surface": "1",
                                                 "Holding something next to something": "0"}))
    (ann / "train.json").write_text(json.dumps([
        {"id": "11", "label": "holding cup next to pen", "template": "Holding [something] next to [something]",
         "placeholders": ["cup", "pen"]},
        {"id": "12", "label": "putting a cup on a table", "template": "Putting [something] on a surface",
         "placeholders": ["a cup"]},
        {"id": "13", "label": "?", "template": "Juggling [something]", "placeholders": ["x"]},
    ]))
    (ann / "validation.json").write_text(json.dumps([
        {"id": "21", "label": "...", "template": "Putting [something] on a surface", "placeholders": []}]))
    (ann / "test.json").write_text(json.dumps([{"id": "31"}]))
    for vid in ("11", "21", "31"):
        touch(root / f"{vid}.webm")
    result = build_ssv2(root, ann, splits=("train", "val", "test"))
    assert rel(result.entries, root) == [("31.webm", None, "test"),
                                         ("11.webm", "Holding something next to something", "train"),
                                         ("21.webm", "Putting something on a surface", "val")]
    assert rel(result.missing, root) == [("12.webm", "Putting something on a surface", "train")]
    assert result.skipped[0].where == "train.json[2]" and "not in labels.json" in result.skipped[0].reason
    assert result.classes == ["Holding something next to something", "Putting something on a surface"]


def test_ssv2_bad_files(tmp_path):
    (tmp_path / "labels.json").write_text("{broken")
    with pytest.raises(DataError, match=r"labels.json:1: invalid JSON"):
        build_ssv2(tmp_path, tmp_path)
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataError, match="label file not found"):
        build_ssv2(tmp_path, tmp_path)


# --------------------------------------------------------------------------------------------
# UCF101


@pytest.fixture
def ucf(tmp_path):
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    (ann / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (ann / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n")
    (ann / "testlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nHandStandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    for name in ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                 "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"):
        touch(root / name)
    return root, ann


def test_ucf101(ucf):
    root, ann = ucf
    result = build_ucf101(root, ann, 1)
    assert rel(result.entries, root) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "test"),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "train"),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", "train"),
    ]
    # The test list spells the folder HandStandPushups (as the official file does): matched, found missing.
    assert [(Path(e.uri).name, e.label) for e in result.missing] == [("v_HandStandPushups_g01_c01.avi", "HandstandPushups")]
    assert result.classes == ["ApplyEyeMakeup", "HandstandPushups"]


def test_ucf101_errors(ucf):
    root, ann = ucf
    with pytest.raises(DataError, match="split number must be 1, 2 or 3"):
        build_ucf101(root, ann, 4)
    with pytest.raises(DataError, match="label file not found"):
        build_ucf101(root, ann, 2)
    (ann / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n")
    with pytest.raises(DataError, match=r"trainlist01.txt:1: class index 2 does not match"):
        build_ucf101(root, ann, 1)
    (ann / "trainlist01.txt").write_text("Juggling/v_Juggling_g08_c01.avi 1\n")
    with pytest.raises(DataError, match=r"trainlist01.txt:1: class folder 'Juggling'"):
        build_ucf101(root, ann, 1)


# --------------------------------------------------------------------------------------------
# HMDB51


def test_hmdb51(tmp_path):
    root, ann = tmp_path / "hmdb51", tmp_path / "splits"
    ann.mkdir()
    (ann / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")
    (ann / "cartwheel_test_split1.txt").write_text("d.avi 1 \n")
    (ann / "cartwheel_test_split2.txt").write_text("d.avi 2 \n")
    for name in ("brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi"):
        touch(root / name)
    result = build_hmdb51(root, ann, 1)
    assert rel(result.entries, root) == [("brush_hair/b.avi", "brush_hair", "test"),
                                         ("brush_hair/a.avi", "brush_hair", "train")]
    assert rel(result.missing, root) == [("cartwheel/d.avi", "cartwheel", "train")]
    assert result.stats["unused"] == 1 and result.classes == ["brush_hair", "cartwheel"]
    assert [e.split for e in build_hmdb51(root, ann, 2, check_exists=False).entries] == ["test"]
    with pytest.raises(DataError, match="no \\*_test_split3.txt files"):
        build_hmdb51(root, ann, 3)
    (ann / "cartwheel_test_split1.txt").write_text("d.avi 7\n")
    with pytest.raises(DataError, match=r"cartwheel_test_split1.txt:1: expected 'video.avi 0\|1\|2'"):
        build_hmdb51(root, ann, 1)


# --------------------------------------------------------------------------------------------
# Folder tree


def test_folder_tree_without_splits(tmp_path):
    for name in ("dog/1.mp4", "dog/sub/2.MKV", "cat/3.avi", "cat/notes.txt", "loose.mp4", "cat/.DS_Store"):
        touch(tmp_path / name)
    result = build_folder(tmp_path)
    assert rel(result.entries, tmp_path) == [("cat/3.avi", "cat", None), ("dog/1.mp4", "dog", None),
                                             ("dog/sub/2.MKV", "dog", None)]
    assert sorted((Path(s.where).name, s.reason) for s in result.skipped) == [
        ("loose.mp4", "not inside a class folder"), ("notes.txt", "not a video extension")]
    assert result.stats["hidden"] == 1 and result.classes == ["cat", "dog"]


def test_folder_tree_with_splits(tmp_path):
    for name in ("train/dog/1.mp4", "validation/cat/2.mp4", "test/cat/3.mp4", "extra/dog/4.mp4", "train/5.mp4"):
        touch(tmp_path / name)
    result = build_folder(tmp_path)
    assert rel(result.entries, tmp_path) == [("test/cat/3.mp4", "cat", "test"), ("train/dog/1.mp4", "dog", "train"),
                                             ("validation/cat/2.mp4", "cat", "val")]
    assert sorted(Path(s.where).name for s in result.skipped) == ["4.mp4", "5.mp4"]
    assert result.stats["layout"] == "split/class"


def test_folder_missing_root(tmp_path):
    with pytest.raises(DataError, match="video root not found"):
        build_folder(tmp_path / "nope")
