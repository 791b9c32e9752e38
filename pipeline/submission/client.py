"""Where a job goes: the cluster at RAY_ADDRESS, its token, its Jobs API.

    cluster = Cluster.connect()                   # RAY_ADDRESS + token auth, or a one-line error
    job_id = cluster.submit(spec, env)            # a checked JobSpec and runtime env (preflight)
    status = cluster.follow(job_id, sys.stdout)   # streams the driver's log, returns the end state

Addresses are Ray's: ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; either the dashboard URL
(``http://head:8265``, what ``ray job submit`` uses) or the GCS address (``head:6379``, looked
up through the GCS). The Jobs SDK itself prefers those variables over any argument, so they are
the only source here too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pipeline.core.errors import TubeletError, one_line
from pipeline.infra.tracking import git_commit, redact_url
from pipeline.submission.preflight import JobSpec, SubmissionError, redacted, repo_root

# No module-level import of ray here (nor of anything that imports it): Ray's core reads
# RAY_AUTH_MODE once, when ray is imported, and ``use_token_auth`` must be able to set it first.

log = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 10001, "": 6379}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def cluster_address(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    address = env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS", "")
    if not address:
        raise SubmissionError("RAY_ADDRESS is not set: point it at the cluster's dashboard (http://HEAD:8265) "
                              "or GCS (HEAD:6379); for the local cluster: source .cluster/local/env")
    if address in ("auto", "local"):
        raise SubmissionError(f"RAY_ADDRESS={address} names no cluster to submit to: use http://HEAD:8265 "
                              f"or HEAD:6379")
    return address


def _host_port(address: str) -> tuple[str, int]:
    scheme = address.split("://", 1)[0] if "://" in address else ""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        raise SubmissionError(f"RAY_ADDRESS={address!r} has an invalid port") from None
    if not parts.hostname:
        raise SubmissionError(f"RAY_ADDRESS={address!r} has no host")
    return parts.hostname, port or _DEFAULT_PORTS.get(scheme, 6379)


def check_address(address: str, timeout: float = 5.0) -> None:
    """A TCP connect first: the SDK's own retries turn a dead address into minutes of waiting."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SubmissionError(f"no Ray cluster answers at {redact_url(address)} ({host}:{port}: {reason}); start it "
                              f"(make cluster-up) or fix RAY_ADDRESS") from None


@dataclass(frozen=True)
class RayAuth:
    """Token authentication of the Jobs API (Ray >= 2.52): ``Authorization: Bearer <token>``."""

    mode: str  # "token" | "disabled"
    token: str = field(default="", repr=False)
    source: str = ""  # where the token came from (a variable name or a path), for messages

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.mode == "token" else {}


def ray_auth(env: Mapping[str, str] | None = None) -> RayAuth:
    """Ray's own rules: RAY_AUTH_TOKEN > RAY_AUTH_TOKEN_PATH > ~/.ray/auth_token.

    With RAY_AUTH_MODE unset a token that exists is used (as ``pipeline.orchestration.ray_train`` does for
    drivers): a cluster without authentication ignores the header, one with it needs it.
    """
    env = os.environ if env is None else env
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode not in ("", "token", "disabled"):
        raise SubmissionError(f"RAY_AUTH_MODE={mode!r}: expected 'token' or 'disabled'")
    if mode == "disabled":
        return RayAuth("disabled")
    token, source = env.get("RAY_AUTH_TOKEN", "").strip(), "RAY_AUTH_TOKEN"
    if not token and env.get("RAY_AUTH_TOKEN_PATH"):
        source = env["RAY_AUTH_TOKEN_PATH"]
        try:
            token = Path(source).expanduser().read_text().strip()
        except OSError as exc:
            raise SubmissionError(f"RAY_AUTH_TOKEN_PATH={source}: {exc.strerror or exc}") from None
    elif not token:
        source = os.path.join(env.get("HOME") or os.path.expanduser("~"), ".ray", "auth_token")
        token = Path(source).read_text().strip() if os.path.isfile(source) else ""
    if not token:
        if mode == "token":
            raise SubmissionError("RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                                  "(the cluster's token: ray get-auth-token on its head)")
        return RayAuth("disabled")
    return RayAuth("token", token, source)


def use_token_auth() -> RayAuth:
    """Call before anything imports ray: with a token and RAY_AUTH_MODE unset, set it to ``token``.

    The HTTP calls of the Jobs API carry our ``Authorization`` header either way, but a GCS address
    (``HEAD:6379``) is first resolved to the dashboard over gRPC by Ray's C++ client, which sends
    the token only when RAY_AUTH_MODE said so at import time.
    """
    auth = ray_auth()
    if auth.mode == "token" and not os.environ.get("RAY_AUTH_MODE"):
        os.environ["RAY_AUTH_MODE"] = "token"
    return auth


class _ClusterErrors:
    """Turns what the Jobs SDK raises into one-line SubmissionErrors naming the address."""

    def __init__(self, address: str, auth: RayAuth) -> None:
        self.address, self.auth = address, auth

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (TubeletError, KeyboardInterrupt)):
            return False
        import requests
        from ray.exceptions import AuthenticationError

        where, reason = redact_url(self.address), one_line(exc).rstrip(".")
        if isinstance(exc, AuthenticationError):
            has = f"the token from {self.auth.source}" if self.auth.mode == "token" else "no token"
            reason = reason.split(". ")[0]  # Ray appends a paragraph of advice on the same line
            if "://" not in self.address and os.environ.get("RAY_AUTH_MODE") != "token":
                hint = ("export RAY_AUTH_MODE=token (Ray reads it at import) "
                        "or use the dashboard address http://HEAD:8265")
            else:
                hint = "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to its token (ray get-auth-token on the head)"
            raise SubmissionError(f"the Ray cluster at {where} refused {has} ({reason}); {hint}") from None
        if isinstance(exc, (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            raise SubmissionError(f"no Ray Jobs API answers at {where} ({reason}); is it the dashboard "
                                  f"address (http://HEAD:8265) of a running cluster?") from None
        if isinstance(exc, (RuntimeError, ValueError)):  # HTTP errors (404: no such job), bad addresses
            raise SubmissionError(f"Ray Jobs API at {where}: {reason}") from None
        return False


class Cluster:
    """A Ray cluster's Jobs API (``JobSubmissionClient``); every failure is a one-line SubmissionError."""

    def __init__(self, client: Any, address: str, auth: RayAuth) -> None:
        self.client, self.address = client, address
        self._errors = _ClusterErrors(address, auth)

    @classmethod
    def connect(cls, timeout: float = 5.0) -> Cluster:
        """The cluster at RAY_ADDRESS, authenticated; fails fast when it is missing or refuses us.

        Reads ``os.environ`` only: the SDK prefers RAY_API_SERVER_ADDRESS / RAY_ADDRESS from there
        over any address it is given, so another source here would check one cluster and use another.
        """
        address = cluster_address()
        check_address(address, timeout)
        auth = ray_auth()
        from ray.job_submission import JobSubmissionClient

        with _ClusterErrors(address, auth):
            client = JobSubmissionClient(address, headers=auth.headers())
        return cls(client, address, auth)

    def submit(self, spec: JobSpec, runtime: Mapping[str, Any]) -> str:
        metadata = {"tubelet.job": spec.job, "tubelet.config": spec.config}
        commit = git_commit(repo_root())
        if commit:
            metadata["tubelet.git_commit"] = commit
        log.info("submitting %s with runtime env %s", redact_url(spec.entrypoint), redacted(runtime))
        with self._errors:
            return self.client.submit_job(entrypoint=spec.entrypoint, runtime_env=dict(runtime), metadata=metadata)

    def follow(self, job_id: str, out: IO[str], settle_s: float = 30.0) -> str:
        """Stream the job's log until it ends; returns its final status (SUCCEEDED, FAILED, STOPPED)."""

        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()

        with self._errors:
            asyncio.run(tail())
        # The log stream closes as the driver exits; the recorded status can lag it by a moment.
        return self.wait(job_id, settle_s, poll_s=0.5)

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 2.0) -> str:
        """Poll until the job ends or ``timeout_s`` passes; returns the last status seen."""
        deadline = time.monotonic() + timeout_s
        with self._errors:
            while True:
                status = str(self.client.get_job_status(job_id))
                if status in TERMINAL or time.monotonic() > deadline:
                    return status
                time.sleep(poll_s)

    def info(self, job_id: str) -> dict[str, Any]:
        """What ``status`` shows: never the runtime env (it carries the forwarded credentials)."""
        with self._errors:
            return _summary(self.client.get_job_info(job_id))

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the cluster knows, newest first."""
        with self._errors:
            jobs = self.client.list_jobs()
        return sorted((_summary(j) for j in jobs), key=lambda j: j["start_time"] or 0, reverse=True)

    def logs(self, job_id: str) -> str:
        with self._errors:
            return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """True if a stop was requested, False if the job had already ended."""
        with self._errors:
            return bool(self.client.stop_job(job_id))


def _summary(info: Any) -> dict[str, Any]:
    return {"job_id": info.submission_id or info.job_id, "status": str(info.status),
            "entrypoint": redact_url(info.entrypoint or ""), "message": redact_url(info.message or ""),
            "start_time": info.start_time, "end_time": info.end_time,
            "driver_exit_code": getattr(info, "driver_exit_code", None),
            "metadata": {k: v for k, v in (info.metadata or {}).items() if k.startswith("tubelet.")}}


__all__ = ["Cluster", "RayAuth", "TERMINAL", "check_address", "cluster_address", "ray_auth", "use_token_auth"]
