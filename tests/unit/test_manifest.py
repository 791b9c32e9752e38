"""Manifest reading/writing, validation messages, hostile-URI checks, label indexing."""

from __future__ import annotations

import io
import json

import pytest

from pipeline.core.errors import DataError
from pipeline.data.manifest import (
    ManifestEntry,
    check_uri,
    format_manifest,
    label_index,
    label_names,
    parse_manifest,
    read_manifest,
    write_manifest,
)

ENTRIES = [
    ManifestEntry("/data/b.mp4", "walk", "val"),
    ManifestEntry("/data/a.mp4", "run", "train"),
    ManifestEntry("s3://bucket/clips/c.mp4", "run", "train", 1.5, 4.0),
]


def test_csv_with_header_and_optional_columns():
    text = "uri,label,split\n/v/a.mp4,run,train\n/v/b.mp4,,val\n\n/v/c.mp4,walk,\n"
    entries = read_manifest(text)
    assert entries == [ManifestEntry("/v/a.mp4", "run", "train"), ManifestEntry("/v/b.mp4", None, "val"),
                       ManifestEntry("/v/c.mp4", "walk", None)]


def test_headerless_single_column_and_column_order():
    assert read_manifest("/v/a.mp4\n/v/b.mp4\n") == [ManifestEntry("/v/a.mp4"), ManifestEntry("/v/b.mp4")]
    assert read_manifest("split,uri\ntest,/v/a.mp4\n") == [ManifestEntry("/v/a.mp4", None, "test")]


def test_quoted_labels_with_commas():
    entries = read_manifest('uri,label\n/v/a.mp4,"passing American football (in game), x"\n')
    assert entries[0].label == "passing American football (in game), x"


def test_jsonl_and_int_labels():
    text = '{"uri": "/v/a.mp4", "label": "run", "split": "train"}\n\n{"uri": "/v/b.mp4", "label": 3}\n'
    assert read_manifest(text) == [ManifestEntry("/v/a.mp4", "run", "train"), ManifestEntry("/v/b.mp4", "3")]


@pytest.mark.parametrize("fmt,suffix", [("csv", ".csv"), ("jsonl", ".jsonl")])
def test_roundtrip_sorted_and_deterministic(tmp_path, fmt, suffix):
    path = write_manifest(ENTRIES, tmp_path / f"m{suffix}")
    back = read_manifest(path)
    assert sorted(back, key=lambda e: e.uri) == sorted(ENTRIES, key=lambda e: e.uri)
    assert [e.split for e in back] == ["train", "train", "val"]  # sorted by (split, uri)
    assert path.read_text() == format_manifest(list(reversed(ENTRIES)), fmt)


def test_write_leaves_identical_file_untouched(tmp_path):
    path = write_manifest(ENTRIES, tmp_path / "m.csv")
    before = path.stat().st_mtime_ns
    import os

    os.utime(path, ns=(before - 10**9, before - 10**9))
    write_manifest(list(reversed(ENTRIES)), path)
    assert path.stat().st_mtime_ns == before - 10**9


def test_csv_only_has_used_columns(tmp_path):
    text = format_manifest([ManifestEntry("/v/a.mp4", None, "train")], "csv")
    assert text == "uri,split\n/v/a.mp4,train\n"


def test_file_object_and_lines_and_path_string(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"uri": "/v/a.mp4"}) + "\n")
    assert read_manifest(str(path)) == [ManifestEntry("/v/a.mp4")]
    assert read_manifest(io.StringIO("uri\n/v/a.mp4\n")) == [ManifestEntry("/v/a.mp4")]
    assert parse_manifest(["uri,label", "/v/a.mp4,x"]) == [ManifestEntry("/v/a.mp4", "x")]


@pytest.mark.parametrize(
    "text,message",
    [
        ("uri,label\n/v/a.mp4,x\n/v/b.mp4,x,extra\n", "<text>:3: expected 2 fields"),
        ("uri,colour\n/v/a.mp4,red\n", "<text>:1: bad header"),
        ("uri,label\n,x\n", "<text>:2: empty or missing uri"),
        ("uri,split\n/v/a.mp4,tr ain\n", "<text>:2: split 'tr ain'"),
        ("uri,start,end\n/v/a.mp4,3,2\n", "<text>:2: end (2.0) must be greater"),
        ("uri,start,end\n/v/a.mp4,x,2\n", "<text>:2: start must be a number"),
        ("uri,start,end\n/v/a.mp4,1,\n", "<text>:2: start and end must be given together"),
        ("uri,start,end\n/v/a.mp4,nan,3\n", "finite number"),
        ('{"uri": "/v/a.mp4"}\n{"uri": \n', "<text>:2: invalid JSON"),
        ('{"uri": "/v/a.mp4", "lable": "x"}\n', "<text>:1: unknown key 'lable'"),
        ('{"uri": "/v/a.mp4"}\n["/v/b.mp4"]\n', "<text>:2: expected a JSON object"),
        ("a,b\n1,2\n", "<text>:1: no header"),
        ("uri\n/v/a.mp4\n/v/a.mp4\n", "3: duplicate of line 2"),
    ],
)
def test_malformed_rows_give_one_line_with_line_number(text, message):
    with pytest.raises(DataError) as info:
        read_manifest(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"uri\n/v/\xff.mp4\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_manifest(bad)


def test_same_uri_different_clips_is_fine():
    assert len(read_manifest("uri,start,end\n/v/a.mp4,0,5\n/v/a.mp4,5,10\n")) == 2


@pytest.mark.parametrize(
    "uri",
    ["/data/videos/a.mp4", "videos/a.mp4", "file:///data/a.mp4", "file://localhost/data/a.mp4",
     "s3://bucket/key/a.mp4", "/data/vidéos/été.mp4", "/data/a..b.mp4"],
)
def test_check_uri_accepts(uri):
    assert check_uri(uri) is None


@pytest.mark.parametrize(
    "uri,reason",
    [
        ("", "empty"),
        ("../etc/passwd", "traversal"),
        ("/data/../../etc/shadow", "traversal"),
        ("s3://bucket/a/../../b.mp4", "traversal"),
        ("file:///data/%2e%2e/etc/passwd", "traversal"),
        ("videos\\..\\..\\x.mp4", "traversal"),
        ("/data/a\x00.mp4", "control"),
        ("/data/a\n.mp4", "control"),
        ("/data/a\u202e4pm.exe", "control"),  # right-to-left override
        ("/data/\udcff.mp4", "UTF-8"),  # an undecodable byte, as os.fsdecode hands it over
        ("http://evil.example/a.mp4", "unsupported uri scheme 'http'"),
        ("gs://bucket/a.mp4", "unsupported uri scheme 'gs'"),
        ("file://otherhost/a.mp4", "remote host"),
        ("s3://bucket", "bucket and a key"),
        ("file:///data/a%0A.mp4", "control"),
    ],
)
def test_check_uri_rejects(uri, reason):
    got = check_uri(uri)
    assert got is not None and reason in got


def test_check_uri_allowed_roots(tmp_path):
    roots = ["/data/videos", "s3://bucket/clips"]
    assert check_uri("/data/videos/a/b.mp4", roots) is None
    assert check_uri("file:///data/videos/b.mp4", roots) is None
    assert check_uri("s3://bucket/clips/b.mp4", roots) is None
    assert check_uri("relative/b.mp4", roots) is None  # resolved against the manifest's folder later
    assert "outside" in check_uri("/data/videos2/b.mp4", roots)  # prefix of a sibling is not inside
    assert "outside" in check_uri("/etc/passwd", roots)
    assert "outside" in check_uri("s3://other/clips/b.mp4", roots)
    # '..' is refused even when the normalised path would be inside a root.
    assert "traversal" in check_uri("/data/videos/../x", ["/data"])


def test_label_names_and_index():
    assert label_names(ENTRIES + [ManifestEntry("/v/x.mp4")]) == ["run", "walk"]
    assert label_index(ENTRIES) == {"run": 0, "walk": 1}
