"""Everything checked on the laptop before a job is sent: what runs, with which code and env.

    spec = JobSpec.build("pretrain", "pretrain/demo", ["train.steps=10"])  # job, config, keys checked
    env = runtime_env()                           # working dir = this checkout; forwarded env
    check_tracking(spec)                          # an http(s) MLflow server must answer first

The jobs are the registry's (:mod:`jobs.registry`); a job's config is one of its files under
``jobs/configs/<job>/`` (the cluster gets the checkout, not the laptop's other files), loaded
with the job's own loader so that a typo in a key fails here, in one line.
"""

from __future__ import annotations

import copy
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.config import SECRET_MARKERS, load_config, to_dict
from pipeline.core.errors import TubeletError
from pipeline.core.job_env import JOB_ENV
from pipeline.infra.tracking import check_reachable, redact_url

if TYPE_CHECKING:
    from jobs.registry import Job

# No module-level import of ray here (nor of anything that imports it): Ray's core reads
# RAY_AUTH_MODE once, when ray is imported, and ``use_token_auth`` must be able to set it first.

# Anchored at the root ("/data", not "data"): pipeline/data/ is code and must travel. Without a
# trailing slash a pattern matches the directory itself, so Ray never walks into .venv at all.
EXCLUDES = ("/.venv", "/data", "/runs", "/.cluster", "/.git", "/build", "/dist", ".pytest_cache",
            "__pycache__", "*.pyc", "*.egg-info")
# Relative paths under these folders name files that are not shipped with the working dir.
_LOCAL_ONLY_DIRS = ("data", "runs", ".cluster")


class SubmissionError(TubeletError):
    """The job cannot be submitted or queried; the message is one line and says what to fix."""


# --------------------------------------------------------------------------------------------
# What runs: a job of the registry and one of its configs. What a submission ships and runs is
# the jobs package, so this is the one library module that reads it (imported when asked).


def jobs_dir() -> Path:
    """The ``jobs`` package's folder (its modules and ``configs/``)."""
    import jobs

    return Path(next(iter(jobs.__path__))).resolve()


def repo_root() -> Path:
    """The checkout that becomes the job's working dir: the folder holding ``jobs/``."""
    return jobs_dir().parent


def _registered(job: str) -> Job:
    """The registry's entry of a job that takes ``--config``, or a one-line error naming the choices."""
    from jobs.registry import JOBS, configurable

    entry = JOBS.get(job)
    if entry is None or not entry.config:
        raise SubmissionError(f"unknown job {job!r}: choose one of {', '.join(configurable())}")
    return entry


def job_names() -> list[str]:
    """The jobs that take ``--config``: the ones that can be submitted."""
    from jobs.registry import configurable

    return configurable()


def config_class(job: str) -> type:
    """The config dataclass of ``jobs.<job>``; imports the module (not its ``__main__``)."""
    return _registered(job).config_class()


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
        entry = _registered(job)
        name = resolve_config(job, config)
        # The job's own loader: an unknown key or a wrong type fails here, as it would on the cluster.
        resolved = load_config(entry.config_class(), jobs_dir() / "configs" / f"{name}.toml", list(overrides))
        return cls(job, name, tuple(overrides), resolved)

    @property
    def entrypoint(self) -> str:
        args = ["python", "-m", _registered(self.job).module, "--config", self.config]
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
    """The Ray runtime env of a submitted job: this checkout as working dir, storage/tracking env
    (:data:`pipeline.core.job_env.JOB_ENV`, the names its driver passes on to its workers) and ``extra_env``.

    ``forward_secrets=False`` leaves credentials to the cluster (KubeRay Secrets, instance
    profiles) and forwards only endpoints and URIs. The values are real: print ``redacted(...)``.
    """
    env = os.environ if env is None else env
    names = [*JOB_ENV, *(n for n in extra_env if n not in JOB_ENV)]
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


__all__ = ["EXCLUDES", "JobSpec", "SubmissionError", "check_tracking", "config_class", "config_names",
           "is_secret_name", "job_names", "redacted", "repo_root", "resolve_config", "runtime_env", "tracking_uri",
           "tracking_warnings"]
