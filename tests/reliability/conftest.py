"""Fault injection for real: processes killed with SIGKILL, an S3 endpoint that goes away, hostile
input, secrets, and what the project's servers listen on.

Shared helpers: a job started as a subprocess whose output the test can watch line by line
(:class:`Job`), and cleanup of every process it started — found from its own process tree,
stopped by pid, never by name.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

# The session's embedded Ray and moto S3 server (imported, so pytest registers them here too).
from tests.integration.conftest import ray_local, s3_server  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and every process below it, now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list[psutil.Process], timeout: float = 20.0) -> None:
    """SIGKILL the given processes (ours: collected from a tree we started) and wait for them."""
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


def freeze(pid: int, timeout: float = 10.0) -> list[psutil.Process]:
    """SIGSTOP ``pid`` and every process below it, until no new one appears; the stopped processes.

    SIGSTOP is asynchronous: a process running on another core goes on until the kernel delivers
    it, so this waits until every one of them is seen stopped (or gone) before it returns. From
    then on nothing in the tree runs and what it has on disk stays as it is: a test can check that
    state and then SIGKILL (:func:`kill_all`) exactly that state, or :func:`thaw` it.
    """
    stopped: dict[int, psutil.Process] = {}
    while True:
        new = [p for p in tree(pid) if p.pid not in stopped]
        if not new:
            break
        for p in new:
            try:
                p.suspend()
                stopped[p.pid] = p
            except psutil.NoSuchProcess:
                pass
    deadline = time.monotonic() + timeout
    for p in stopped.values():
        while _running(p):
            if time.monotonic() > deadline:
                raise AssertionError(f"process {p.pid} did not stop within {timeout:.0f} s of SIGSTOP")
            time.sleep(0.005)
    return list(stopped.values())


def _running(p: psutil.Process) -> bool:
    """Whether any thread of ``p`` has yet to stop (a thread inside a syscall, e.g. a rename
    waiting on the disk, finishes it first)."""
    try:
        states = [Path(f"/proc/{p.pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for tid in os.listdir(f"/proc/{p.pid}/task")]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(state not in "TtZX" for state in states)


def thaw(procs: list[psutil.Process]) -> None:
    """SIGCONT what :func:`freeze` stopped."""
    for p in procs:
        try:
            p.resume()
        except psutil.NoSuchProcess:
            pass


class Job:
    """``python -m jobs.<name> ...`` in the background; stdout+stderr collected line by line.

    Every process it ever had below it is remembered (``seen``), so that after a SIGKILL of the
    driver — whose children are then re-parented — whatever survived can still be stopped by pid.
    """

    def __init__(self, module: str, args: list[str], env: dict[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", "-m", module, *args], cwd=REPO,
                                     env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._log = open(log, "a") if log else None  # noqa: SIM115 - closed in _pump
        self.seen: dict[int, psutil.Process] = {}
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._new.put(line)
            if self._log:
                self._log.write(line)
                self._log.flush()
        if self._log:
            self._log.close()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def remember_tree(self) -> None:
        for p in tree(self.proc.pid):
            self.seen.setdefault(p.pid, p)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The first output line (from now on) for which ``predicate`` holds; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.remember_tree()
            try:
                line = self._new.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self._new.empty():
                    raise AssertionError(f"job exited ({self.proc.returncode}) first:\n{self.output[-4000:]}")
                continue
            if predicate(line):
                return line
        raise AssertionError(f"nothing matched within {timeout:.0f} s:\n{self.output[-4000:]}")

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.remember_tree()
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.stop()
            raise AssertionError(f"job still running after {timeout:.0f} s:\n{self.output[-4000:]}")
        self._drain()
        return self.proc.returncode

    def _drain(self) -> None:
        for _ in range(50):  # the pump thread ends right after the pipe closes
            if self.proc.stdout is None or self.proc.stdout.closed or self._new.empty():
                break
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> None:
        """SIGKILL the job and everything it ever started that is still alive."""
        self.remember_tree()
        kill_all([p for p in self.seen.values() if _alive(p)])
        self._drain()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def survivors(job: Job) -> list[psutil.Process]:
    return [p for p in job.seen.values() if _alive(p)]


@pytest.fixture()
def jobs() -> Iterator[list[Job]]:
    """Collects the jobs a test starts; whatever they left running is stopped at the end."""
    started: list[Job] = []
    yield started
    for job in started:
        job.stop()


# --------------------------------------------------------------------------------------------
# Pre-training under faults: one run, two kills, one relaunch (shared by several test modules)

# Ray's per-node agents: they notice their raylet is gone, then try to report to the (dead) GCS
# before exiting, which takes them well over a minute. Ray's behaviour, not ours; the tests stop them.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
STEP_LINE = re.compile(r"\bstep (\d+)/(\d+)\s+loss")
RESUMED = re.compile(r"resumed at step (\d+)")
TINY = ["model.num_frames=4", "model.img_size=32",
        "data.sampling_rate=2", "data.batch_size=4", "data.repeated_aug=2", "data.num_workers=0",
        "train.log_every=1", "train.image_every=0", "tracking.system_metrics=false",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1"]
# Values nobody could guess, given to the jobs as their credentials; they must never come back out.
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": f"awsSecret{uuid.uuid4().hex}",
    "AWS_SESSION_TOKEN": f"awsSession{uuid.uuid4().hex}",
    "MLFLOW_TRACKING_TOKEN": f"mlflowToken{uuid.uuid4().hex}",
    "RAY_AUTH_TOKEN": f"rayToken{uuid.uuid4().hex}",
}


def secret_env(ray_tmp: Path) -> dict[str, str]:
    """Secrets as a job's environment, and its own Ray temp root (so the test can read its logs)."""
    return {**SECRETS, "AWS_ACCESS_KEY_ID": "AKIATUBELETRELIABLE", "RAY_TMPDIR": str(ray_tmp)}


def short_tmp(prefix: str) -> Path:
    """A short folder under /tmp: Ray puts unix sockets below RAY_TMPDIR (108-character limit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def wait_in_worker_log(run_dir: Path, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """The first match of ``pattern`` in the run's worker logs (``<run>/logs/ray-*.log``), waiting for it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted((run_dir / "logs").glob("ray-*.log")):
            match = pattern.search(path.read_text(errors="replace"))
            if match:
                return match
        time.sleep(0.5)
    raise AssertionError(f"{pattern.pattern!r} not in the worker logs of {run_dir} after {timeout} s")


def step_lines(text: str) -> list[int]:
    """Steps printed by rank 0, in output order."""
    return [int(m.group(1)) for m in STEP_LINE.finditer(text)]


@pytest.fixture(scope="session")
def pretrain_shards(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipeline.data.synthetic import generate_synthetic
    from pipeline.orchestration.sharding import ShardSection, shard

    root = tmp_path_factory.mktemp("reliability-data")
    entries = generate_synthetic(root / "videos", num_per_class=2, classes=["left", "right", "cw"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    (root / "manifest.csv").write_text("\n".join(["uri,label,split"] + [f"{e.uri},{e.label},train"
                                                                        for e in entries]) + "\n")
    index, _ = shard(ShardSection(manifest=str(root / "manifest.csv"), output=str(root / "shards"),
                                  videos_per_shard=2, progress=False))
    assert index["totals"]["samples"] == len(entries)
    return str(root / "shards")


@pytest.fixture(scope="session")
def pretrain_faults(pretrain_shards: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``python -m jobs.pretrain`` (2 Ray Train workers, ZeRO-2, 32 steps, a checkpoint every 4):

    1. SIGKILL rank 1's process right after step 6 (Ray Train restarts the workers);
    2. SIGKILL the driver when the restarted run prints step 16 (it is then saving that checkpoint);
    3. relaunch the same run name: it must continue from the newest complete checkpoint.
    Every launch runs with fake credentials in its environment and its own Ray temp folder.
    """
    from pipeline.train.checkpoint import is_complete, latest_checkpoint

    tmp = tmp_path_factory.mktemp("pretrain-faults")
    steps, every = 32, 4
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    sets = [f"data.shards={pretrain_shards}", f"run.output={tmp / 'runs'}", "run.name=faults",
            f"train.steps={steps}", f"train.checkpoint_every={every}", "train.export=false",
            "deepspeed.zero_stage=2", "scaling.max_failures=1", f"tracking.tracking_uri={tracking}", *TINY]
    args = ["--config", "pretrain/demo", *[a for s in sets for a in ("--set", s)]]
    ray_tmps = [short_tmp("trel-pt-"), short_tmp("trel-pt-")]
    run_dir = tmp / "runs" / "faults"
    out: dict[str, Any] = {"tmp": tmp, "run_dir": run_dir, "tracking": tracking, "steps": steps, "every": every,
                           "ray_tmps": ray_tmps}
    first = Job("jobs.pretrain", args, env=secret_env(ray_tmps[0]), log=tmp / "launch1.log")
    second: Job | None = None
    try:
        # Ray Train says which process is rank 1; the console shows our lines only, its worker log all
        rank1 = int(wait_in_worker_log(run_dir, re.compile(r"pid=(\d+)\) world_rank=1\b"), timeout=240).group(1))
        first.wait_for(lambda s: step_lines(s) == [6], timeout=240)
        first.remember_tree()
        assert rank1 in first.seen, f"rank 1 (pid {rank1}) is not a process of the job we started"
        kill_all([first.seen[rank1]])
        out["worker_killed_after"] = max(step_lines(first.output))
        line = first.wait_for(lambda s: RESUMED.search(s) is not None, timeout=240)
        out["worker_resume_step"] = int(RESUMED.search(line).group(1))  # type: ignore[union-attr]
        first.wait_for(lambda s: step_lines(s) == [16], timeout=240)
        first.remember_tree()
        out["driver_killed_after"] = max(step_lines(first.output))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=30)
        # The driver's Ray (GCS, raylet, workers) shares its fate; give it a moment, then count.
        deadline = time.monotonic() + 15
        while [p for p in survivors(first) if _name(p) not in RAY_AGENTS] and time.monotonic() < deadline:
            time.sleep(0.5)
        out["survivors"] = [(p.pid, _name(p)) for p in survivors(first)]
        first.stop()
        out["launch1"] = first.output

        checkpoints = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
        out["complete_at_relaunch"] = {p.name: is_complete(str(p)) for p in checkpoints}
        newest = latest_checkpoint(str(run_dir))
        out["expected_resume_step"] = json.loads((Path(newest) / "loop.json").read_text())["step"] if newest else 0

        second = Job("jobs.pretrain", args, env=secret_env(ray_tmps[1]), log=tmp / "launch2.log")
        out["rc2"] = second.wait(timeout=300)
        out["launch2"] = second.output
        yield out
    finally:
        first.stop()
        if second is not None:
            second.stop()
        for d in ray_tmps:
            shutil.rmtree(d, ignore_errors=True)


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return "?"
