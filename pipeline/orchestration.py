"""Where Ray starts: an embedded Ray on this machine by default, a cluster when asked.

``RAY_ADDRESS`` (or an explicit address) connects to a running cluster; otherwise
``ray.init(address="local")`` starts a fresh embedded Ray that only this process uses and that
is shut down when the job ends. A Ray already initialised by the caller (a test, a Ray job's
driver) is reused and left running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

log = logging.getLogger(__name__)

# Environment a remote worker needs to reach the same storage and tracking server as the driver.
# Values travel in the runtime env and are never logged.
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "TUBELET_IO_RETRIES",
)


def forwarded_env() -> dict[str, str]:
    return {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}


@contextmanager
def ray_session(address: str = "", num_cpus: int | None = None) -> Iterator[dict[str, Any]]:
    """Connect to Ray for the duration of a job; yields the cluster's resources."""
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    runtime_env = {"env_vars": forwarded_env()}
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        # Logical CPUs may exceed the physical ones: Ray Train's controller needs a slot of its own.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=True)
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
