"""Pre-training survives SIGKILL: of a training worker (restarted by Ray Train) and of the driver
(relaunched by name), continuing from the newest *complete* checkpoint with no step lost or run
twice; a checkpoint cut short by a kill is never read.

The run and its two kills happen once, in the ``pretrain_faults`` fixture (conftest.py).
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from pipeline.train.checkpoint import FILES_DIR, LOOP_FILE, is_complete, latest_checkpoint
from tests.reliability.conftest import RAY_AGENTS, RESUMED, step_lines

pytestmark = pytest.mark.reliability


def _attempts(text: str) -> list[list[int]]:
    """The steps rank 0 printed, cut into attempts wherever the step goes back (a restart)."""
    runs: list[list[int]] = []
    for step in step_lines(text):
        if not runs or step <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(step)
    return runs


def _history(tracking: str) -> dict[int, list[float]]:
    client = MlflowClient(tracking)
    runs = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string="attributes.run_name = 'faults'")
    assert len(runs) == 1, f"a relaunch must log into the run it continues, found {len(runs)} runs"
    assert runs[0].info.status == "FINISHED"
    values: dict[int, list[float]] = collections.defaultdict(list)
    for m in client.get_metric_history(runs[0].info.run_id, "loss/train"):
        values[m.step].append(m.value)
    return values


def test_killed_worker_restarts_from_the_last_checkpoint(pretrain_faults: dict[str, Any]) -> None:
    f = pretrain_faults
    first, restarted = _attempts(f["launch1"])[:2]
    resume = f["worker_resume_step"]
    # The step-4 checkpoint was committed before step 5 ran, so nothing older may be used.
    assert resume % f["every"] == 0 and f["every"] <= resume <= f["worker_killed_after"] + f["every"], resume
    assert first[0] == 1 and first == list(range(1, first[-1] + 1))
    assert restarted[0] == resume + 1, f"restart resumed at {resume} but ran {restarted[:3]}..."
    assert restarted == list(range(resume + 1, restarted[-1] + 1)), "a step was skipped after the restart"


def test_killed_driver_relaunch_resumes_from_newest_complete_checkpoint(pretrain_faults: dict[str, Any]) -> None:
    f = pretrain_faults
    assert f["rc2"] == 0, f["launch2"][-4000:]
    expected = f["expected_resume_step"]
    assert expected >= 12, f"checkpoints before the driver kill: {f['complete_at_relaunch']}"
    resumed = [int(m.group(1)) for m in RESUMED.finditer(f["launch2"])]
    assert resumed and set(resumed) == {expected}, (resumed, f["complete_at_relaunch"])
    printed = step_lines(f["launch2"])
    assert printed == list(range(expected + 1, f["steps"] + 1)), "the relaunch skipped or repeated a step"
    last = json.loads((Path(latest_checkpoint(str(f["run_dir"]))) / LOOP_FILE).read_text())
    assert last["step"] == f["steps"] and last["world_size"] == 2


def test_the_console_shows_our_lines_and_the_worker_log_keeps_the_rest(pretrain_faults: dict[str, Any]) -> None:
    """Ray's chatter (its controller's worker-group lines, per-rank checkpoint reports) stays off
    the console and in the run's worker log, whose path the console names; our lines reach it."""
    text = pretrain_faults["launch2"]
    named = re.search(r"worker logs: (\S+\.log)", text)
    assert named, text[-3000:]
    log = Path(named.group(1)).read_text()
    assert Path(named.group(1)).parent == pretrain_faults["run_dir"] / "logs"
    assert step_lines(text) and "resumed at step" in text
    for chatter in ("Reporting training result", "world_rank=0", "Checkpoint successfully created"):
        assert chatter not in text, f"{chatter!r} on the console"
        assert chatter in log, f"{chatter!r} not in the worker log"
    # Ray Train's placement-group cleaner cannot work without a dashboard and says so every second
    assert "PlacementGroupCleaner" not in log, "an idle Ray Train service was started"


def test_driver_kill_takes_its_ray_down(pretrain_faults: dict[str, Any]) -> None:
    """An embedded Ray shares its driver's fate: its GCS, raylet, controller and training workers
    are gone within seconds (Ray's two node agents linger for a while; see RAY_AGENTS)."""
    assert [s for s in pretrain_faults["survivors"] if s[1] not in RAY_AGENTS] == []


def test_no_step_is_lost_and_replayed_steps_are_identical(pretrain_faults: dict[str, Any]) -> None:
    f = pretrain_faults
    history = _history(f["tracking"])
    assert sorted(history) == list(range(1, f["steps"] + 1)), "a step is missing from the loss history"
    for step in range(1, f["worker_resume_step"] + 1):
        assert len(history[step]) == 1, f"step {step} (before the first resume point) was logged again"
    for step, values in history.items():
        # Steps after a resume point run again (the kill lost them): with the same data, masks and
        # RNG state they must give the same loss, else the resume was not exact.
        assert len(values) <= 3 and max(values) - min(values) <= 1e-5 * max(1.0, abs(values[0])), (step, values)


# --- a checkpoint cut short is skipped ------------------------------------------------------------

def _damage(ckpt: Path, how: str) -> None:
    if how == "rank1_file_list_missing":
        (ckpt / FILES_DIR / "rank1.json").unlink()
    elif how == "zero_shard_truncated":
        shard = next(ckpt.glob("ds/*/*rank_1_*optim_states.pt"))
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "rng_missing":
        (ckpt / "rng" / "rank1.pt").unlink()
    elif how == "loop_cut":
        loop = ckpt / LOOP_FILE
        loop.write_bytes(loop.read_bytes()[:40])
    elif how == "file_list_cut":
        listing = ckpt / FILES_DIR / "rank0.json"
        listing.write_bytes(listing.read_bytes()[:10])
    elif how == "ds_latest_missing":
        (ckpt / "ds" / "latest").unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize("how", ["rank1_file_list_missing", "zero_shard_truncated", "rng_missing", "loop_cut",
                                 "file_list_cut", "ds_latest_missing"])
def test_half_written_checkpoint_is_skipped(pretrain_faults: dict[str, Any], tmp_path: Path, how: str) -> None:
    """A copy interrupted anywhere (Ray Train uploads file by file) leaves the older checkpoint in use."""
    real = sorted((p for p in pretrain_faults["run_dir"].glob("checkpoint_*") if p.is_dir()),
                  key=lambda p: json.loads((p / LOOP_FILE).read_text())["step"])[-2:]
    assert len(real) == 2 and all(is_complete(str(p)) for p in real)
    older, newer = (shutil.copytree(p, tmp_path / p.name) for p in real)
    assert latest_checkpoint(str(tmp_path)) == str(newer)
    _damage(newer, how)
    assert not is_complete(str(newer))
    assert latest_checkpoint(str(tmp_path)) == str(older)
