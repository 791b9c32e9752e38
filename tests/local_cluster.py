"""Free ports for any test, and what the tests that start cluster/local/up.sh share: the
environment, pid checks.

Each test module starts its own two-node cluster (head + worker, one logical CPU each) on ports
picked free at start, so modules and other work on the machine do not collide.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from pipeline.core.net import free_port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # Ray's GCS and raylets bind all interfaces
        except OSError:
            return False
    return True


def free_port_base() -> int:
    """A base for up.sh's fixed port layout (base+0..16 nodes, base+100..299 workers), all free now."""
    for _ in range(50):
        base = random.randrange(20000, 32000 - 300, 10)
        if all(_bindable(base + i) for i in [*range(17), *range(100, 300)]):
            return base
    raise RuntimeError("no free port range for the test cluster")


def clean_environ() -> dict[str, str]:
    """This process's environment without a Ray address to join (the tests start their own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER"))}


def cluster_env(state: Path, **extra: str) -> dict[str, str]:
    """The environment for up.sh / down.sh: free ports, state under ``state``, 1 CPU per node (two
    1-CPU Ray Train workers take one node each), a Ray temp root of its own, no inherited address."""
    gcs = free_port()
    env = clean_environ()
    env.update(TUBELET_CLUSTER_DIR=str(state), TUBELET_CLUSTER_PORT=str(gcs),
               TUBELET_CLUSTER_DASHBOARD_PORT=str(free_port()), TUBELET_CLUSTER_PORT_BASE=str(free_port_base()),
               TUBELET_CLUSTER_HEAD_CPUS="1", TUBELET_CLUSTER_WORKER_CPUS="1",
               TUBELET_CLUSTER_TMP=f"/tmp/tubelet-ray-test-{gcs}", **extra)
    return env


def running(pid: int) -> bool:
    """A zombie counts as stopped: it has exited and only waits to be reaped (pid 1 here may never)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"
