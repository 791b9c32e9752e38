"""Jobs submitted to a real cluster through the Jobs API, logging to a real MLflow server.

One two-node cluster (cluster/local/up.sh, token auth on) and one MLflow server
(cluster/mlflow/serve.sh) for the module, on ports picked free at start. Two tiny pre-trainings
run side by side: one submitted with the `ray job submit` CLI, one with `python -m jobs.submit`
(JobSubmissionClient, working dir = this checkout, env forwarded). Both must SUCCEED, leave a
checkpoint and exported weights, and log their steps to the server. Jobs started on this machine
with RAY_ADDRESS (sharding, then a pre-training whose two workers land on both nodes) join the
same cluster. A job's working dir,
set up on both nodes, stays in place under its driver. A wrong token is refused in one line. The
server listens on 127.0.0.1 only and stop.sh takes down exactly its process group. Only what this
module started is stopped, by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.net import free_port
from pipeline.data.synthetic import generate_synthetic
from pipeline.submission import EXCLUDES, Cluster
from tests.local_cluster import clean_environ, cluster_env, running
from tests.unit.shard_fixtures import make_shards

REPO = Path(__file__).resolve().parents[2]
UP, DOWN = REPO / "cluster/local/up.sh", REPO / "cluster/local/down.sh"
SERVE, STOP = REPO / "cluster/mlflow/serve.sh", REPO / "cluster/mlflow/stop.sh"
BIN = Path(sys.executable).parent

# 2 steps of a 32x32, 4-frame tiny ViT on one Ray Train worker: the point is the plumbing.
TINY = ["model.num_frames=4", "model.img_size=32",
        "data.sampling_rate=2", "data.batch_size=4", "data.repeated_aug=2", "data.num_workers=0",
        "train.steps=2", "train.checkpoint_every=2", "train.log_every=1", "train.image_every=0",
        "tracking.system_metrics=false", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        "deepspeed.zero_stage=0"]
SECRET = "wJalrXUtnFEMI-test-sentinel-9c1d"


def _group(pgid: int) -> list[int]:
    """Running members of a process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """cluster/local/up.sh and cluster/mlflow/serve.sh, started side by side on free ports.

    Torn down by down.sh and stop.sh, which stop the recorded pids (process group) only.
    """
    root = tmp_path_factory.mktemp("submit")
    ray_env = cluster_env(root / "cluster", TUBELET_RAY=str(BIN / "ray"), RAY_AUTH_MODE="token")
    dashboard, mlflow_port = ray_env["TUBELET_CLUSTER_DASHBOARD_PORT"], free_port()
    mlflow_env = dict(clean_environ(), TUBELET_MLFLOW_DIR=str(root / "mlflow"), TUBELET_MLFLOW_PORT=str(mlflow_port),
                      TUBELET_MLFLOW_BACKEND=f"sqlite:///{root / 'mlflow.db'}",
                      TUBELET_MLFLOW_ARTIFACTS=str(root / "artifacts"), TUBELET_MLFLOW_WORKERS="1",
                      TUBELET_MLFLOW=str(BIN / "mlflow"))
    node_pids: list[int] = []
    server_pid = 0
    try:
        up = subprocess.Popen(["bash", str(UP)], env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        serve = subprocess.Popen(["bash", str(SERVE)], env=mlflow_env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        up_out, serve_out = up.communicate(timeout=240)[0], serve.communicate(timeout=240)[0]
        state = root / "cluster"
        node_pids = [int((state / f"{n}.pid").read_text()) for n in ("head", "worker") if (state / f"{n}.pid").exists()]
        if (root / "mlflow" / "server.pid").exists():
            server_pid = int((root / "mlflow" / "server.pid").read_text())
        assert up.returncode == 0, f"up.sh failed:\n{up_out}"
        assert serve.returncode == 0, f"serve.sh failed:\n{serve_out}"
        assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in serve_out
        exports = dict(line.removeprefix("export ").split("=", 1) for line in (state / "env").read_text().splitlines())
        yield {"env": ray_env, "gcs": exports["RAY_ADDRESS"], "dashboard": f"http://127.0.0.1:{dashboard}",
               "mlflow": {"url": f"http://127.0.0.1:{mlflow_port}", "port": mlflow_port, "pid": server_pid,
                          "env": mlflow_env, "root": root}}
    finally:
        down = subprocess.run(["bash", str(DOWN)], env=ray_env, capture_output=True, text=True, timeout=120)
        subprocess.run(["bash", str(STOP)], env=mlflow_env, capture_output=True, text=True, timeout=60)  # idempotent
        left = [p for p in node_pids if running(p)] + (_group(server_pid) if server_pid else [])
        for pid in left:  # a stop script failed: do not leave its processes behind
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_env["TUBELET_CLUSTER_TMP"], ignore_errors=True)  # the nodes' session files
        assert down.returncode == 0 and not left, f"left running: {left}; down.sh: {down.stdout}{down.stderr}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny shards (8 short H.264 videos) on the disk both nodes share."""
    root = tmp_path_factory.mktemp("submit-data") / "shards"
    make_shards(root, [4, 4])
    return root


def _sets(shards: Path, output: Path, name: str, tracking: str) -> list[str]:
    return [f"data.shards={shards}", f"run.output={output}", f"run.name={name}", f"tracking.tracking_uri={tracking}",
            *TINY]


def _mlflow_steps(tracking: str, name: str) -> tuple[str, list[int]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs(client.get_experiment_by_name("tubelet").experiment_id,
                              filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, got {len(runs)}"
    return runs[0].info.status, sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss/train"))


def test_pretrain_submitted_with_ray_cli_and_jobs_submit(services: dict, shards: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, mlflow_server = services, services["mlflow"]
    output, tracking = tmp_path / "runs", mlflow_server["url"]
    # 1. The stock CLI against the dashboard address.
    cli_id = f"tubelet-cli-{uuid.uuid4().hex[:8]}"
    runtime = {"excludes": list(EXCLUDES), "env_vars": {"MLFLOW_TRACKING_URI": tracking}}
    entry = ["python", "-m", "jobs.pretrain", "--config", "pretrain/demo",
             *[a for s in _sets(shards, output, "cli", tracking) for a in ("--set", s)]]
    ray_cli = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], "--no-wait",
                              "--submission-id", cli_id, "--working-dir", str(REPO),
                              "--runtime-env-json", json.dumps(runtime), "--", *entry],
                             env=cluster["env"], capture_output=True, text=True, timeout=120)
    assert ray_cli.returncode == 0, ray_cli.stdout + ray_cli.stderr

    # 2. While it runs (one CPU each of the cluster's two): jobs.submit as a user runs it after `source .cluster/local/env` (the GCS address), with
    #    the tracking server and a credential in the environment; it follows its job to the end.
    env = dict(cluster["env"], RAY_ADDRESS=cluster["gcs"], MLFLOW_TRACKING_URI=tracking, AWS_SECRET_ACCESS_KEY=SECRET)
    sub = subprocess.run([sys.executable, "-m", "jobs.submit", "pretrain", "--config", "pretrain/demo",
                          *[a for s in _sets(shards, output, "sdk", "")[:3] + TINY for a in ("--set", s)]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    log = sub.stdout + sub.stderr
    assert sub.returncode == 0, log[-6000:]
    assert SECRET not in log, "a forwarded credential was printed"
    sdk_id = next(w for line in sub.stdout.splitlines() if line.startswith("jobs.submit: submitted ")
                  for w in [line.split()[2]])
    assert f"jobs.submit: {sdk_id} SUCCEEDED" in sub.stdout
    assert "step 2/2" in sub.stdout, "the driver's log was not streamed"
    monkeypatch.setenv("RAY_ADDRESS", cluster["dashboard"])
    client = Cluster.connect()
    assert client.wait(cli_id, timeout_s=300) == "SUCCEEDED", client.logs(cli_id)[-4000:]

    # The credential reached the job (its runtime env) without being printed by `status`.
    assert client.client.get_job_info(sdk_id).runtime_env["env_vars"]["AWS_SECRET_ACCESS_KEY"] == SECRET
    status = subprocess.run([sys.executable, "-m", "jobs.submit", "status", sdk_id], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and SECRET not in status.stdout + status.stderr
    assert "tubelet.config    pretrain/demo" in status.stdout

    for name in ("cli", "sdk"):
        run_dir = output / name
        assert (run_dir / "export" / "pretrain_fp32.pt").stat().st_size > 0, sorted(os.listdir(run_dir))
        assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir()), sorted(os.listdir(run_dir))
        assert _mlflow_steps(tracking, name) == ("FINISHED", [1, 2])
    # Artifacts went through the server into its own folder (the job needed no store of its own).
    assert any((mlflow_server["root"] / "artifacts").rglob("config.toml"))


# The driver pins a task on every other node, then checks that its own working dir is still the
# directory it started in, and that the other node extracted the job's files into a folder of its
# own. up.sh once gave both nodes one temp dir, so one session dir: the node that set the working
# dir up second re-extracted it with overwrite, deleting it under the running driver (a race, so
# the folder check is the deterministic half).
_PROBE = """
import os, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()
start = os.stat(".").st_ino
here = ray.get_runtime_context().get_node_id()
others = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here]
cwd = ray.remote(num_cpus=0)(lambda: os.getcwd())
dirs = ray.get([cwd.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote()
                for n in others])
print("probe:", len(others), "other node(s); driver dir kept:", os.stat(".").st_ino == start,
      "; shared with another node:", os.getcwd() in dirs)
"""


def test_each_node_extracts_the_working_dir_into_its_own_folder(services: dict, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "probe.py").write_text(_PROBE)
    monkeypatch.setenv("RAY_ADDRESS", services["dashboard"])
    client = Cluster.connect()
    job = client.client.submit_job(entrypoint="python probe.py", runtime_env={"working_dir": str(tmp_path)})
    status = client.wait(job, timeout_s=180)
    logs = client.logs(job)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "probe: 1 other node(s); driver dir kept: True ; shared with another node: False" in logs, logs[-3000:]


def test_a_wrong_token_is_refused_in_one_line(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = services
    monkeypatch.setenv("RAY_ADDRESS", cluster["dashboard"])
    before = len(Cluster.connect().jobs())
    env = dict(cluster["env"], RAY_ADDRESS=cluster["dashboard"], RAY_AUTH_TOKEN="not-the-cluster-token")
    out = subprocess.run([sys.executable, "-m", "jobs.submit", "pretrain", "--config", "pretrain/demo", "--set",
                          "data.shards=/nowhere", "--set", "tracking.enabled=false"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and "warning:" not in ln]
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"jobs.submit: error: the Ray cluster at {cluster['dashboard']} refused the token")
    assert "not-the-cluster-token" not in out.stdout + out.stderr
    assert len(Cluster.connect().jobs()) == before, "a job was submitted anyway"


def test_mlflow_server_listens_on_loopback_and_stops_by_pid(services: dict) -> None:
    import psutil

    mlflow_server = services["mlflow"]
    port, pid = mlflow_server["port"], mlflow_server["pid"]
    with urllib.request.urlopen(f"{mlflow_server['url']}/health", timeout=10) as r:
        assert r.status == 200 and r.read().strip() == b"OK"
    listening = [c.laddr.ip for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening and set(listening) == {"127.0.0.1"}, listening
    group = _group(pid)
    assert pid in group and len(group) >= 2, f"expected the server and its uvicorn worker in group {pid}: {group}"

    stop = subprocess.run(["bash", str(STOP)], env=mlflow_server["env"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and f"SIGTERM to process group {pid}" in stop.stdout, stop.stdout + stop.stderr
    deadline = time.monotonic() + 10
    while any(running(p) for p in group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in group if running(p)], "stop.sh left server processes running"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the port still answers"
    assert not (mlflow_server["root"] / "mlflow" / "server.pid").exists()


# --- a driver on this machine, its Ray Train workers on both nodes -----------------------------

def _manifest(root: Path) -> Path:
    entries = generate_synthetic(root / "videos", num_per_class=2, classes=["left", "right", "cw"], frames=12,
                                 size=(48, 48), splits={"train": 1.0})
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(["uri,label,split"] + [f"{e.uri},{e.label},train" for e in entries]) + "\n")
    return manifest


def _train_worker_nodes(dashboard: str, env: dict) -> set[str]:
    """Node ids of the job's Ray Train workers, from the Ray state API (dead actors included)."""
    code = ("import json, sys; from ray.util.state import list_actors; "
            "actors = list_actors(address=sys.argv[1], filters=[('class_name', '=', 'RayTrainWorker')], "
            "limit=100, raise_on_missing_output=False); print(json.dumps([a.node_id for a in actors]))")
    out = subprocess.run([sys.executable, "-c", code, dashboard], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_jobs_started_here_shard_and_pretrain_on_both_nodes(services: dict, tmp_path: Path, mlflow_db: str) -> None:
    """``jobs.shard`` and ``jobs.pretrain`` run on this machine join the cluster through RAY_ADDRESS
    (as after ``source .cluster/local/env``); the two Ray Train workers land one on each node.
    Both nodes run on this machine and share its filesystem: local shards, output and tracking
    database are fine (the module's MLflow server may be stopped by then)."""
    manifest, tracking = _manifest(tmp_path), mlflow_db
    env = dict(services["env"], RAY_ADDRESS=services["gcs"],
               # An explicit address never switches token auth on by itself (Ray 2.60): the driver
               # must ask for it; the token comes from ~/.ray/auth_token, made by up.sh if missing.
               RAY_AUTH_MODE="token")
    shard = subprocess.run([sys.executable, "-m", "jobs.shard", "--set", f"shard.manifest={manifest}",
                            "--set", f"shard.output={tmp_path / 'shards'}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert shard.returncode == 0, shard.stderr[-3000:]

    sets = _sets(tmp_path / "shards", tmp_path / "runs", "two-nodes", tracking) + [
        "train.steps=4", "train.checkpoint_every=2", "deepspeed.zero_stage=2", "scaling.num_workers=2"]
    job = subprocess.run([sys.executable, "-m", "jobs.pretrain", "--config", "pretrain/demo",
                          *[a for s in sets for a in ("--set", s)]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    log = job.stdout + job.stderr
    assert job.returncode == 0, log[-5000:]
    assert "Connecting to existing Ray cluster" in log, "the job did not join the cluster"

    run_dir = tmp_path / "runs" / "two-nodes"
    assert (run_dir / "export" / "pretrain_fp32.pt").stat().st_size > 0
    assert any(p.name.startswith("checkpoint_") for p in run_dir.iterdir()), sorted(os.listdir(run_dir))
    assert _mlflow_steps(tracking, "two-nodes") == ("FINISHED", [1, 2, 3, 4])
    nodes = _train_worker_nodes(services["dashboard"], env)
    assert len(nodes) == 2, f"the Ray Train workers ran on {len(nodes)} node(s): {nodes}"
