"""Submitting jobs to a Ray cluster through its Jobs API, with every check done on the laptop first.

    spec = JobSpec.build("pretrain", "pretrain/demo", ["train.steps=10"])  # job, config, keys checked
    env = runtime_env()                           # working dir = this checkout; forwarded env
    check_tracking(spec)                          # an http(s) MLflow server must answer first
    cluster = Cluster.connect()                   # RAY_ADDRESS + token auth, or a one-line error
    job_id = cluster.submit(spec, env)
    status = cluster.follow(job_id, sys.stdout)   # streams the driver's log, returns the end state

Why more than ``ray job submit``: a typo in a config key, a stopped tracking server or a wrong
token should fail here in one line, not minutes later on a GPU cluster; and the credentials a
job needs travel in its runtime env without ever being printed or logged (``redacted``).

:mod:`~pipeline.submission.preflight` checks the job, its config and what travels with it (no
network but the tracking server's ``/health``); :mod:`~pipeline.submission.client` talks to the
cluster. Neither imports ray at module level: Ray's core reads RAY_AUTH_MODE once, when ray is
imported, and ``use_token_auth`` must be able to set it first.
"""

from pipeline.submission.client import (
                                        TERMINAL,
                                        Cluster,
                                        RayAuth,
                                        check_address,
                                        cluster_address,
                                        ray_auth,
                                        use_token_auth,
)
from pipeline.submission.preflight import (
                                        EXCLUDES,
                                        JobSpec,
                                        SubmissionError,
                                        check_tracking,
                                        config_class,
                                        config_names,
                                        is_secret_name,
                                        job_names,
                                        redacted,
                                        repo_root,
                                        resolve_config,
                                        runtime_env,
                                        tracking_uri,
                                        tracking_warnings,
)

__all__ = ["EXCLUDES", "TERMINAL", "Cluster", "JobSpec", "RayAuth", "SubmissionError", "check_address",
           "check_tracking", "cluster_address", "config_class", "config_names", "is_secret_name", "job_names",
           "ray_auth", "redacted", "repo_root", "resolve_config", "runtime_env", "tracking_uri", "tracking_warnings",
           "use_token_auth"]
