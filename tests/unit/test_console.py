"""A job's console: our lines from the workers, Ray's and the libraries' lines in a log file."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from pipeline.orchestration.console import MARK, WorkerLogs, log_path, mark_worker_logs

# What Ray streams from its processes (the dicts its log monitor publishes), as one job produced them.
CLEANER = {"pid": 11, "actor_name": "PlacementGroupCleaner", "is_err": True, "ip": "10.0.0.1", "localhost": "10.0.0.1",
           "lines": ["Failed to query Ray Train Controller actor state, retrying"] * 3}
RANK0 = {"pid": 12, "actor_name": "RayTrainWorker", "is_err": True, "ip": "10.0.0.1", "localhost": "10.0.0.1",
         "lines": [f"{MARK}step 1/4  loss 1.0730", "Reporting training result 1: TrainingReport(...)",
                   "/x/torch/distributed/c10d_logger.py:83: FutureWarning: deprecated", f"{MARK}WARNING: slow data"]}


def test_the_console_gets_our_lines_and_the_file_gets_every_line_with_its_process() -> None:
    file, out, err = io.StringIO(), io.StringIO(), io.StringIO()
    logs = WorkerLogs(file, out, err)
    logs(CLEANER)
    logs(RANK0)
    assert err.getvalue().splitlines() == ["step 1/4  loss 1.0730", "WARNING: slow data"]
    assert out.getvalue() == ""
    lines = file.getvalue().splitlines()
    assert len(lines) == 7
    assert lines[0] == "(PlacementGroupCleaner pid=11) Failed to query Ray Train Controller actor state, retrying"
    assert lines[4] == "(RayTrainWorker pid=12) Reporting training result 1: TrainingReport(...)"


def test_a_worker_marks_the_lines_of_our_loggers_only_and_prints_them_once(capsys: pytest.CaptureFixture[str]
                                                                           ) -> None:
    logger = logging.getLogger("pipeline")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers[:] = []  # a worker's "pipeline" logger as it starts
    try:
        mark_worker_logs()
        mark_worker_logs()  # idempotent: one handler
        logging.getLogger("pipeline.train.loop").info("step %d/%d", 1, 4)
        logging.getLogger("pipeline.data.loader").warning("shard a.tar unreadable:\nsecond line")
        logging.getLogger("deepspeed").warning("library chatter")
        err = capsys.readouterr().err.splitlines()
        assert [line for line in err if line.startswith(MARK)] == [
            f"{MARK}step 1/4", f"{MARK}WARNING: shard a.tar unreadable:", f"{MARK}second line"]
        assert not logger.propagate  # ours do not also go through the root logger (Ray's handlers)
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_the_log_lives_in_the_run_folder_or_in_the_temporary_folder_for_remote_runs(tmp_path: Path) -> None:
    local = log_path(str(tmp_path / "runs" / "demo"))
    assert local.parent == tmp_path / "runs" / "demo" / "logs" and local.name.startswith("ray-")
    remote = log_path("s3://bucket/runs/demo")
    assert remote.parent.name == "tubelet-logs" and remote.name.startswith("demo-ray-")


def test_quiet_console_replaces_rays_printer_while_ray_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher

    from pipeline.orchestration.ray_train import quiet_console

    printed: list[dict] = []
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", printed.append)])
    path = tmp_path / "logs" / "ray.log"
    with quiet_console(path) as used:
        assert used == path and [name for name, _ in dispatcher.handlers] == ["ray_print_logs"]
        dispatcher.emit(dict(RANK0))
    assert dispatcher.handlers == [] and printed == []  # Ray's printer never saw the lines
    assert "step 1/4  loss 1.0730" in capsys.readouterr().err
    assert "Reporting training result" in path.read_text()
    monkeypatch.setenv("TUBELET_CONSOLE", "all")
    monkeypatch.setattr(dispatcher, "handlers", [("ray_print_logs", printed.append)])
    with quiet_console(path) as used:
        dispatcher.emit(dict(RANK0))
    assert used is None and len(printed) == 1


def test_the_token_file_is_named_when_ray_uses_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.orchestration.ray_train import token_note

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/run/secrets/ray_token")
    assert "/run/secrets/ray_token" in token_note()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x")  # in the environment: no file to name
    assert token_note() == ""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert token_note() == ""
