"""What the servers the project starts listen on, read from the kernel (psutil) for exactly the
processes this test started.

- The embedded Ray of ``pipeline.orchestration.ray_train.ray_session`` (GCS, raylet, workers, agents):
  127.0.0.1 only.
- The local two-node cluster of ``cluster/local/up.sh``: the dashboard / Jobs API on 127.0.0.1
  only; Ray 2.60's CLI cannot keep the rest on loopback (see the xfail below).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from tests.local_cluster import cluster_env
from tests.reliability.conftest import REPO, kill_all, tree

pytestmark = pytest.mark.reliability
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listeners(pids: list[int]) -> list[tuple[int, str, str, int]]:
    """(pid, process name, ip, port) of every listening TCP socket of these processes and their children."""
    out = []
    for root in pids:
        for p in tree(root):
            try:
                conns = p.net_connections(kind="inet")
                name = p.name()
            except psutil.Error:
                continue
            out += [(p.pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


EMBEDDED = """
import sys
from pipeline.orchestration.ray_train import ray_session
with ray_session(num_cpus=2):
    import ray
    ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # start workers too
    print("READY", flush=True)
    sys.stdin.readline()
"""


def test_embedded_ray_listens_on_loopback_only() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDED], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen: list[psutil.Process] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        seen = tree(proc.pid)
        found = listeners([proc.pid])
        names = {name for _, name, _, _ in found}
        assert {"gcs_server", "raylet"} <= names, found  # the check saw Ray's servers
        exposed = [f for f in found if f[2] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback: {exposed}"
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        finally:
            kill_all([p for p in seen + tree(proc.pid) if p.is_running()])


# --- cluster/local/up.sh ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The nodes' listening sockets (``listeners``) and the ports asked for (``env``)."""
    state = tmp_path_factory.mktemp("cluster") / "state"
    env = cluster_env(state)
    pids: list[int] = []
    seen: list[psutil.Process] = []
    try:
        up = subprocess.run(["bash", str(REPO / "cluster/local/up.sh")], env=env, capture_output=True, text=True,
                            timeout=240)
        pids = [int((state / f"{n}.pid").read_text()) for n in ("head", "worker") if (state / f"{n}.pid").exists()]
        seen = [p for pid in pids for p in tree(pid)]
        assert up.returncode == 0, up.stdout + up.stderr
        yield {"listeners": listeners(pids), "env": env}
    finally:
        subprocess.run(["bash", str(REPO / "cluster/local/down.sh")], env=env, capture_output=True, text=True,
                       timeout=120)
        kill_all([p for p in seen if p.is_running()])  # only if down.sh missed some
        shutil.rmtree(env["TUBELET_CLUSTER_TMP"], ignore_errors=True)


def test_cluster_dashboard_and_jobs_api_on_loopback_only(cluster: dict) -> None:
    found, env = cluster["listeners"], cluster["env"]
    dashboard = [f for f in found if f[3] == int(env["TUBELET_CLUSTER_DASHBOARD_PORT"])]
    assert dashboard and all(ip in LOOPBACK for _, _, ip, _ in dashboard), dashboard
    assert any(f[3] == int(env["TUBELET_CLUSTER_PORT"]) for f in found), "the GCS was not found among the listeners"


@pytest.mark.xfail(strict=True, reason=(
    "Ray 2.60 turns 127.0.0.1 into the host's routable IP for --node-ip-address and for the --address a "
    "worker node or driver joins (services.resolve_ip_for_localhost), and binds GCS/raylet to all interfaces; "
    "only its single-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) keeps loopback, and that mode refuses "
    "to add a second node. The cluster relies on token authentication (RAY_AUTH_MODE=token) instead."))
def test_cluster_listens_on_loopback_only(cluster: dict) -> None:
    exposed = [f for f in cluster["listeners"] if f[2] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
