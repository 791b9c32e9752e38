"""Real components on loopback for integration tests: an embedded Ray and a moto S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One embedded Ray for the session (4 logical CPUs: Ray Train's controller needs a slot), with
    the environment every embedded Ray of the jobs gets (``EMBEDDED_RAY_ENV``)."""
    import ray

    from pipeline.orchestration.ray_train import embedded_env

    with embedded_env():
        if not ray.is_initialized():
            ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP endpoint (moto) on 127.0.0.1 with a bucket ``tubelet``; yields the endpoint URL.

    The AWS_* variables are set for the whole session so that every s3fs/boto3 client, in this
    process and in Ray tasks (which get the driver's storage env), talks to it.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="tubelet")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
