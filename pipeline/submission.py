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

Addresses are Ray's: ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``; either the dashboard URL
(``http://head:8265``, what ``ray job submit`` uses) or the GCS address (``head:6379``, looked
up through the GCS). The Jobs SDK itself prefers those variables over any argument, so they are
the only source here too.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import importlib.util
import logging
import os
import shlex
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pipeline.config import SECRET_MARKERS, load_config, to_dict
from pipeline.errors import TubeletError
from pipeline.tracking import check_reachable, redact_url

# No module-level import of ray here (nor of anything that imports it): Ray's core reads
# RAY_AUTH_MODE once, when ray is imported, and ``use_token_auth`` must be able to set it first.

log = logging.getLogger(__name__)

JOBS_PACKAGE = "jobs"
# Anchored at the root ("/data", not "data"): pipeline/data/ is code and must travel. Without a
# trailing slash a pattern matches the directory itself, so Ray never walks into .venv at all.
EXCLUDES = ("/.venv", "/data", "/runs", "/.cluster", "/.git", "/build", "/dist", ".pytest_cache",
            "__pycache__", "*.pyc", "*.egg-info")
# Relative paths under these folders name files that are not shipped with the working dir.
_LOCAL_ONLY_DIRS = ("data", "runs", ".cluster")
# What a job on the cluster needs to reach the same storage and tracking server as the laptop
# (pipeline.orchestration.FORWARDED_ENV, which a driver passes on to its own workers, and more).
# Not RAY_AUTH_MODE / RAY_AUTH_TOKEN: the cluster's nodes carry their own (the driver a job
# starts authenticates with the node's token), and a runtime env is readable in the dashboard.
SUBMIT_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_S3_ENDPOINT_URL", "TUBELET_IO_RETRIES",
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ray": 10001, "": 6379}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmissionError(TubeletError):
    """The job cannot be submitted or queried; the message is one line and says what to fix."""


# --------------------------------------------------------------------------------------------
# What runs: a job module of jobs/ and one of its configs


def jobs_dir() -> Path:
    spec = importlib.util.find_spec(JOBS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SubmissionError(f"the '{JOBS_PACKAGE}' package is not importable (run from the repository root)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def repo_root() -> Path:
    """The checkout that becomes the job's working dir: the folder holding ``jobs/``."""
    return jobs_dir().parent


def _config_class_name(source: str) -> str | None:
    """``X`` of the ``job_main(X, run, ...)`` call that every config-driven job ends with."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "job_main"
                and node.args and isinstance(node.args[0], ast.Name)):
            return node.args[0].id
    return None


def job_names() -> list[str]:
    """Job modules that take ``--config`` (their ``__main__`` goes through ``job_main``)."""
    names = []
    for path in sorted(jobs_dir().glob("*.py")):
        if not path.name.startswith("_") and _config_class_name(path.read_text()):
            names.append(path.stem)
    return names


def config_class(job: str) -> type:
    """The config dataclass of ``jobs.<job>``; imports the module (not its ``__main__``)."""
    path = jobs_dir() / f"{job}.py"
    name = _config_class_name(path.read_text()) if path.is_file() else None
    if name is None:
        raise SubmissionError(f"unknown job {job!r}: choose one of {', '.join(job_names())}")
    return getattr(importlib.import_module(f"{JOBS_PACKAGE}.{job}"), name)


def config_names(job: str) -> list[str]:
    folder = jobs_dir() / "configs" / job
    return sorted(f"{job}/{p.relative_to(folder).with_suffix('').as_posix()}" for p in folder.rglob("*.toml"))


def resolve_config(job: str, config: str) -> str:
    """``demo``, ``pretrain/demo`` or ``pretrain/demo.toml`` -> ``pretrain/demo``, if that file exists.

    Only configs inside the repository: the cluster gets the checkout, not the laptop's other files.
    """
    name = config.removesuffix(".toml")
    name = name.removeprefix("jobs/configs/")
    if not name.startswith(f"{job}/"):
        name = f"{job}/{name}"
    available = config_names(job)
    if name not in available:
        raise SubmissionError(f"unknown config {config!r} for jobs.{job}: choose one of "
                              f"{', '.join(available) or '(none: jobs/configs/' + job + '/ is empty)'}")
    return name


@dataclass(frozen=True)
class JobSpec:
    """A checked job: the module exists, the config exists and loads with the overrides."""

    job: str
    config: str  # "pretrain/demo": relative to jobs/configs/, the same on the cluster
    overrides: tuple[str, ...] = ()
    resolved: Any = field(default=None, compare=False, repr=False)  # the loaded config dataclass

    @classmethod
    def build(cls, job: str, config: str, overrides: Sequence[str] = ()) -> JobSpec:
        if job not in job_names():
            raise SubmissionError(f"unknown job {job!r}: choose one of {', '.join(job_names())}")
        name = resolve_config(job, config)
        # The job's own loader: an unknown key or a wrong type fails here, as it would on the cluster.
        resolved = load_config(config_class(job), jobs_dir() / "configs" / f"{name}.toml", list(overrides))
        return cls(job, name, tuple(overrides), resolved)

    @property
    def entrypoint(self) -> str:
        args = ["python", "-m", f"{JOBS_PACKAGE}.{self.job}", "--config", self.config]
        for assignment in self.overrides:
            args += ["--set", assignment]
        return shlex.join(args)

    def local_path_warnings(self) -> list[str]:
        """Config values that name files the cluster will not have (relative paths under data/, runs/)."""
        out = []
        for key, value in _flat(to_dict(self.resolved, redact=False) if self.resolved is not None else {}):
            if not isinstance(value, str) or not value:
                continue
            path = value.removeprefix("sqlite:///") if value.startswith("sqlite:///") else value
            if "://" in path or Path(path).is_absolute():
                continue
            if Path(path).parts[:1] and Path(path).parts[0] in _LOCAL_ONLY_DIRS:
                out.append(f"{key}={value!r} is a relative path under {Path(path).parts[0]}/, which is not "
                           f"shipped to the cluster: pass an s3:// URI or a path every node shares")
        return out


def _flat(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


# --------------------------------------------------------------------------------------------
# With which code and environment


def is_secret_name(name: str) -> bool:
    return any(marker in name.lower() for marker in SECRET_MARKERS)


def runtime_env(root: Path | None = None, env: Mapping[str, str] | None = None, extra_env: Sequence[str] = (),
                forward_secrets: bool = True) -> dict[str, Any]:
    """The Ray runtime env of a submitted job: this checkout as working dir, storage/tracking env.

    ``forward_secrets=False`` leaves credentials to the cluster (KubeRay Secrets, instance
    profiles) and forwards only endpoints and URIs. The values are real: print ``redacted(...)``.
    """
    env = os.environ if env is None else env
    names = [*SUBMIT_ENV, *(n for n in extra_env if n not in SUBMIT_ENV)]
    env_vars = {n: env[n] for n in names if env.get(n) and (forward_secrets or not is_secret_name(n))}
    return {"working_dir": str(root or repo_root()), "excludes": list(EXCLUDES), "env_vars": env_vars}


def redacted(runtime: Mapping[str, Any]) -> dict[str, Any]:
    """A copy that is safe to print or log: secret-named values are ``***``, URL credentials masked."""
    out = copy.deepcopy(dict(runtime))
    out["env_vars"] = {k: "***" if is_secret_name(k) else redact_url(str(v))
                       for k, v in runtime.get("env_vars", {}).items()}
    return out


def tracking_uri(spec: JobSpec, env: Mapping[str, str] | None = None) -> str:
    """Where the job will log: its ``tracking.tracking_uri``, else the forwarded MLFLOW_TRACKING_URI."""
    env = os.environ if env is None else env
    section = getattr(spec.resolved, "tracking", None)
    if section is not None and not getattr(section, "enabled", True):
        return ""
    return (getattr(section, "tracking_uri", "") if section is not None else "") or env.get("MLFLOW_TRACKING_URI", "")


def tracking_warnings(spec: JobSpec, env: Mapping[str, str] | None = None) -> list[str]:
    """A job that would log into a SQLite file inside its own working dir on the cluster, lost with it."""
    section = getattr(spec.resolved, "tracking", None)
    if section is None or not getattr(section, "enabled", True):
        return []
    uri = tracking_uri(spec, env)
    if not uri:
        return ["no MLFLOW_TRACKING_URI: the job would log to runs/mlflow.db inside its working dir on the "
                "cluster, which goes away with it; start a tracking server (make mlflow) and export its URL"]
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_absolute():
        return [f"tracking URI {uri} is relative to the job's working dir on the cluster; use a tracking server"]
    return []


def check_tracking(spec: JobSpec, env: Mapping[str, str] | None = None, timeout: float = 5.0) -> str:
    """An http(s) tracking server must answer ``/health`` before a job is sent to log to it."""
    uri = tracking_uri(spec, env)
    check_reachable(uri, timeout)  # TrackingError (one line) when it does not answer
    return uri


# --------------------------------------------------------------------------------------------
# Where: the cluster's address, its token, its Jobs API


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

    With RAY_AUTH_MODE unset a token that exists is used (as ``pipeline.orchestration`` does for
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


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0].rstrip(".") if lines else type(exc).__name__


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

        where = redact_url(self.address)
        if isinstance(exc, AuthenticationError):
            has = f"the token from {self.auth.source}" if self.auth.mode == "token" else "no token"
            reason = _one_line(exc).split(". ")[0]  # Ray appends a paragraph of advice on the same line
            if "://" not in self.address and os.environ.get("RAY_AUTH_MODE") != "token":
                hint = ("export RAY_AUTH_MODE=token (Ray reads it at import) "
                        "or use the dashboard address http://HEAD:8265")
            else:
                hint = "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to its token (ray get-auth-token on the head)"
            raise SubmissionError(f"the Ray cluster at {where} refused {has} ({reason}); {hint}") from None
        if isinstance(exc, (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            raise SubmissionError(f"no Ray Jobs API answers at {where} ({_one_line(exc)}); is it the dashboard "
                                  f"address (http://HEAD:8265) of a running cluster?") from None
        if isinstance(exc, (RuntimeError, ValueError)):  # HTTP errors (404: no such job), bad addresses
            raise SubmissionError(f"Ray Jobs API at {where}: {_one_line(exc)}") from None
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
        from pipeline.tracking import git_commit

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


__all__ = ["EXCLUDES", "Cluster", "JobSpec", "RayAuth", "SUBMIT_ENV", "SubmissionError", "check_address",
           "check_tracking", "cluster_address", "config_class", "config_names", "is_secret_name", "job_names",
           "ray_auth", "redacted", "repo_root", "resolve_config", "runtime_env", "tracking_uri", "tracking_warnings",
           "use_token_auth"]
