"""Storage I/O: atomic writes, listing, and the retry policy (transient vs. final errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core import io as sio
from pipeline.core.errors import StorageError


def test_local_round_trip_and_listing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.bin"
    sio.write_bytes(str(target), b"xyz")
    assert sio.read_bytes(str(target)) == b"xyz" and sio.size(str(target)) == 3
    assert sio.exists(f"file://{target}")
    sio.write_text(str(tmp_path / "a" / "c.txt"), "hi")
    assert [Path(u).name for u in sio.listdir(str(tmp_path / "a"))] == ["b.bin", "c.txt"]
    assert sio.listdir(str(tmp_path / "a"), ".txt") == [str(tmp_path / "a" / "c.txt")]
    assert sio.listdir(str(tmp_path / "nowhere")) == []
    assert not list((tmp_path / "a").glob(".*.tmp")), "no temporary file is left behind"
    sio.remove(str(target))
    assert not target.exists()


def test_join_handles_slashes() -> None:
    assert sio.join("s3://b/p/", "/x", "y.tar") == "s3://b/p/x/y.tar"
    assert sio.join("/d", "e") == "/d/e"


def test_transient_errors_are_retried_then_succeed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sio, "RETRY_BASE_DELAY", 0.001)
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("Connection reset by peer")
        return "ok"

    assert sio.retrying("read s3://b/k", flaky) == "ok" and calls["n"] == 3


def test_transient_errors_give_up_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sio, "RETRY_BASE_DELAY", 0.001)
    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise OSError("Could not connect to the endpoint URL: http://127.0.0.1:9/b")

    with pytest.raises(StorageError) as err:
        sio.retrying("read s3://b/k", down, attempts=4)
    assert calls["n"] == 4
    assert str(err.value).startswith("read s3://b/k: unreachable after 4 attempts") and "\n" not in str(err.value)


@pytest.mark.parametrize("exc,message", [(FileNotFoundError("x"), "not found"),
                                         (PermissionError("denied"), "access denied"),
                                         (ValueError("bad bucket name"), "bad bucket name")])
def test_final_errors_are_not_retried(exc: Exception, message: str) -> None:
    calls = {"n": 0}

    def fail() -> None:
        calls["n"] += 1
        raise exc

    with pytest.raises(StorageError, match=message):
        sio.retrying("read x", fail)
    assert calls["n"] == 1


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="is not writable"):
        sio.check_writable(str(blocker / "sub"))
