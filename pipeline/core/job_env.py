"""The environment variables that travel with a job: one list for every process of it.

A job reaches its storage and tracking server through these variables (credentials, region,
endpoints, the tracking server and its login, the I/O retry budget). Two places send them on,
and they send the same names:

- a submitter (``pipeline.submission``) puts them in the job's runtime env, plus any name the
  user adds with ``--env``, and leaves the secret-named ones out with ``--no-forward-secrets``;
- a driver (``pipeline.orchestration.ray_train``) passes them on to its Ray workers, less what those
  workers already have (the job's runtime env, or the environment an embedded Ray inherited).

Never RAY_AUTH_MODE / RAY_AUTH_TOKEN: a cluster's nodes carry their own token (the driver a job
starts authenticates with the node's), and a runtime env is readable in Ray's dashboard and logs.
"""

from __future__ import annotations

JOB_ENV: tuple[str, ...] = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL", "TUBELET_IO_RETRIES",
    "TUBELET_IO_RETRY_DELAY",
)

__all__ = ["JOB_ENV"]
