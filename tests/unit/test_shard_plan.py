"""The sharding plan: membership from the manifest alone, duplicates and bad rows, constant memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core.errors import DataError
from pipeline.data.manifest import ManifestEntry
from pipeline.data.shard_plan import ShardPlan
from pipeline.data.shard_writer import sample_key

REPO = Path(__file__).resolve().parents[2]


def _csv(path: Path, rows: list[str], header: str = "uri,label,split") -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _layout(plan: ShardPlan) -> list[tuple[str, list[str], str]]:
    return [(s.name, [it.key for it in s.items], s.members_digest()) for s in plan.shards()]


def test_shards_are_a_function_of_the_rows_not_their_order(tmp_path: Path) -> None:
    rows = [f"/v/{i:03d}.mp4,{'ab'[i % 2]},{'train' if i % 4 else 'val'}" for i in range(23)]
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    with ShardPlan(_csv(tmp_path / "a.csv", rows), "train", 4) as a, \
            ShardPlan(_csv(tmp_path / "b.csv", shuffled), "train", 4) as b:
        assert _layout(a) == _layout(b)
        assert a.split_sizes == {"train": 17, "val": 6} and a.num_shards() == 5 + 2
        names = [s.name for s in a.shards()]
        assert names == [f"train-{i:06d}.tar" for i in range(5)] + ["val-000000.tar", "val-000001.tar"]
        for spec in a.shards():
            keys = [it.key for it in spec.items]
            assert keys == sorted(keys) and len(keys) <= 4
            assert all(it.split == spec.split for it in spec.items)
        assert [len(s.items) for s in a.shards()] == [4, 4, 4, 4, 1, 4, 2]


def test_duplicates_and_bad_rows_are_rejected_with_their_lines(tmp_path: Path) -> None:
    rows = ["/v/a.mp4,x,train", "/v/b.mp4,y,", "/v/a.mp4,z,val", "/v/c.mp4,x,train,extra", ",x,train",
            "/v/a.mp4,x,train", "/v/d.mp4,,bad split!"]
    with ShardPlan(_csv(tmp_path / "m.csv", rows), "unlabelled", 10) as plan:
        rejects = {r.line: r.reason for r in plan.rejects()}
        assert rejects[4] == "duplicate of line 2"
        assert rejects[7] == "duplicate of line 2"
        assert rejects[5].startswith("expected 3 fields")
        assert rejects[6] == "empty or missing uri"
        assert "split 'bad split!'" in rejects[8]
        assert plan.inputs == 7 and plan.num_rows == 2 and plan.num_rejects == 5
        assert plan.labels == ["x", "y"]
        items = {it.entry.uri: it for s in plan.shards() for it in s.items}
        assert items["/v/b.mp4"].split == "unlabelled" and items["/v/b.mp4"].label == 1
        assert items["/v/a.mp4"].key == sample_key(ManifestEntry("/v/a.mp4"))


def test_clip_ranges_and_jsonl(tmp_path: Path) -> None:
    lines = [json.dumps({"uri": "/v/a.mp4", "start": 0, "end": 5}), json.dumps({"uri": "/v/a.mp4", "start": 5, "end": 10}),
             json.dumps({"uri": "/v/a.mp4", "start": 5.0, "end": 10.0}), json.dumps({"uri": "\udce9.mp4"}), "{oops"]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with ShardPlan(str(path), "train", 8) as plan:
        assert {r.line: r.reason for r in plan.rejects()} == {3: "duplicate of line 2",
                                                            5: "invalid JSON (Expecting property name enclosed "
                                                               "in double quotes)"}
        entries = sorted((it.entry.uri, it.entry.start) for s in plan.shards() for it in s.items)
        # a lone surrogate survives the plan, for the shard task's uri check to quarantine it with its reason
        assert entries == [("/v/a.mp4", 0.0), ("/v/a.mp4", 5.0), ("\udce9.mp4", None)]


def test_unreadable_manifests_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"uri\n/v/a.mp4\n/v/caf\xe9.mp4\n")
    with pytest.raises(DataError, match=r"not UTF-8 text \(line 3, byte 19\)"):
        ShardPlan(str(bad), "train", 4)
    with pytest.raises(DataError, match="bad header"):
        ShardPlan(_csv(tmp_path / "h.csv", ["/v/a.mp4"], header="uri,colour"), "train", 4)
    with pytest.raises(DataError, match="not found"):
        ShardPlan(str(tmp_path / "absent.csv"), "train", 4)
    with pytest.raises(DataError, match="videos_per_shard must be >= 1"):
        ShardPlan(_csv(tmp_path / "ok.csv", ["/v/a.mp4,x,train"]), "train", 0)


def test_the_plan_removes_its_database(tmp_path: Path) -> None:
    plan = ShardPlan(_csv(tmp_path / "m.csv", ["/v/a.mp4,x,train"]), "train", 4)
    workdir = Path(plan.workdir)
    assert (workdir / "plan.sqlite").is_file()
    plan.close()
    assert not workdir.exists()


def test_planning_200k_rows_holds_no_row_in_memory(tmp_path: Path) -> None:
    """Peak RSS growth while planning and walking every shard of a 200k-row manifest. Holding the
    rows as Python objects (what the driver did before) costs ~80 MB here; the plan ~13 MB."""
    manifest = tmp_path / "m.csv"
    with manifest.open("w") as fh:
        fh.write("uri,label,split\n")
        for i in range(200_000):
            fh.write(f"/data/videos/v{i:08d}.mp4,class{i % 400},{('train', 'val', 'test')[i % 3]}\n")
    code = textwrap.dedent(f"""
        import resource
        from pipeline.data.shard_plan import ShardPlan
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with ShardPlan({str(manifest)!r}, "train", 128) as plan:
            shards = sum(1 for spec in plan.shards() if spec.members_digest())
        print(plan.num_rows, shards, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows, shards, growth_mb = out.stdout.split()
    assert int(rows) == 200_000 and int(shards) == -(-66_667 // 128) + 2 * -(-66_666 // 128)
    assert float(growth_mb) < 40, f"planning grew the driver by {float(growth_mb):.0f} MB"
