"""MLflow behind a tracker object: the only module that imports mlflow.

    tracker = make_tracker(job.tracking, rank)       # NullTracker off rank 0 or when disabled
    with tracker.start(config=job, tags={"stage": "pretrain"}):
        tracker.log_metrics({"loss": 0.9, "lr": 1e-4}, step=10)
        tracker.log_image(reconstruction_grid(orig, masked, recon), "reconstruction", step=10)

Every rank calls the same methods; only :func:`make_tracker` looks at the rank, so loop code
never branches on it.
The tracking URI is ``[tracking] tracking_uri``, else ``MLFLOW_TRACKING_URI``, else an embedded
SQLite store ``sqlite:///runs/mlflow.db`` (this MLflow refuses a plain ``file://`` store). The
tracker talks through an ``MlflowClient`` bound to that URI, never through mlflow's global
"active run", so two trackers (a parent and a child run) can live in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.core.config import SECRET_MARKERS, config_hash, flatten, help_field, to_dict, to_toml
from pipeline.core.errors import TubeletError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///runs/mlflow.db"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


class TrackingError(TubeletError):
    """The tracking store cannot be reached or used; the message is one line."""

    retryable = True  # a tracking server that was down may be back


@dataclass
class TrackingConfig:
    """Experiment tracking (TOML section ``[tracking]``)."""

    enabled: bool = help_field(True, help="log this run to MLflow (rank 0 only)")
    experiment: str = help_field("tubelet", help="MLflow experiment name (created if missing)")
    tracking_uri: str = help_field("", help="'' = $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    run_name: str = help_field("", help="MLflow run name ('' = MLflow's generated name)")
    parent_run_id: str = help_field("", help="make this run a child of that run (pipeline stages)")
    run_id: str = help_field("", help="log into this existing run instead of creating one (set by jobs.pipeline)")
    system_metrics: bool = help_field(True, help="log CPU/memory/disk/network (and GPU) usage")
    system_metrics_interval: float = help_field(10.0, help="seconds between system-metric samples")
    connect_timeout: float = help_field(5.0, help="seconds to wait for a tracking server at start")


def resolve_uri(cfg: TrackingConfig) -> str:
    """Config > ``MLFLOW_TRACKING_URI`` > the embedded SQLite store (its folder is created)."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        # Absolute, so that processes in another working directory (Ray workers) use the same file.
        path = Path(uri[len("sqlite:///"):]).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def check_reachable(uri: str, timeout: float) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer.

    MLflow's own client retries with back-off for minutes before giving up; a short probe of
    ``/health`` first turns a typo or a stopped server into an immediate, readable error.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered: a proxy without /health is still a live server
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {redact_url(uri)} is unreachable ({reason}); "
                            f"start it, fix MLFLOW_TRACKING_URI / tracking.tracking_uri, "
                            f"or set tracking.enabled=false") from None


def redact_url(text: str) -> str:
    """``s3://key:secret@host/x`` -> ``s3://***@host/x``: credentials in URLs never leave."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


def safe_params(params: dict[str, Any]) -> dict[str, str]:
    """Flattened params as MLflow strings; secret-named keys and URL credentials are masked.

    ``to_dict`` already redacts secrets; this is the second lock, for params built by hand.
    """
    out = {}
    for key, value in flatten(params).items():
        leaf = key.rsplit(".", 1)[-1].lower()
        if value not in (None, "", "***") and any(m in leaf for m in SECRET_MARKERS):
            value = "***"
        text = redact_url(str(value))
        out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def run_params(config: Any) -> dict[str, Any]:
    """The MLflow params of a job config: the keys its class names in ``mlflow_params`` (the recipe at
    a glance; MLflow's image card prints every param of a run above its picture), else every key.
    The whole config goes with the run as ``config.toml`` either way."""
    if config is None:
        return {}
    flat = flatten(to_dict(config))
    keys = getattr(type(config), "mlflow_params", None)
    return {k: flat[k] for k in keys} if keys else flat


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the checkout the code runs from ('' outside git, e.g. an installed package)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# --------------------------------------------------------------------------------------------
# Trackers


class Tracker(Protocol):
    """What the training loops call, on every rank."""

    @property
    def run_id(self) -> str | None: ...
    def start(self, run_name: str = "", params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
              config: Any = None, resume_run_id: str = "") -> Tracker: ...
    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None: ...
    def log_image(self, image: Any, name: str, step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...
    def __enter__(self) -> Tracker: ...
    def __exit__(self, *exc: Any) -> None: ...


class NullTracker:
    """Does nothing: ranks other than 0, and runs with tracking disabled."""

    run_id: str | None = None

    def start(self, run_name: str = "", params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
              config: Any = None, resume_run_id: str = "") -> NullTracker:
        return self

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        pass

    def log_image(self, image: Any, name: str, step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow 3's model-training experiment (runs, charts), not GenAI (traces)
# MLflow 3.17's UI takes the view from a switch kept in the browser (GenAI by default) and ignores
# the tag, unless the page's URL names it: the links this package prints carry this parameter,
# and open the runs' charts rather than the runs' table.
UI_TRAINING_VIEW = "workflowType=machine_learning&compareRunsMode=CHART"


# The training curves' names in MLflow. Its chart view lays sections out by key prefix, sorted,
# then the unprefixed keys ("Model metrics"), then system/: these prefixes sort first, so the
# loss, then the lr and grad norm, are what the charts open with.
CHART_KEYS = {"loss": "loss/train", "lr": "optim/lr", "grad_norm": "optim/grad_norm",
              "nonfinite_skipped": "optim/nonfinite_skipped"}


def chart_keys(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` under their MLflow names (:data:`CHART_KEYS`; the others as they are)."""
    return {CHART_KEYS.get(k, k): v for k, v in metrics.items()}


def experiment_ui_url(base_url: str, experiment_id: str) -> str:
    """An experiment's runs in MLflow's UI at ``base_url``: the model-training view, charts shown."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_TRAINING_VIEW}"


def experiment_id_of(uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store at ``uri``; '' when there is none (never raises)."""
    try:
        experiment = _client(uri).get_experiment_by_name(name)
    except Exception:  # noqa: BLE001
        return ""
    return experiment.experiment_id if experiment is not None else ""


class MlflowTracker:
    """One MLflow run. ``start`` creates it (a child run when ``parent_run_id`` is set)."""

    def __init__(self, cfg: TrackingConfig) -> None:
        from mlflow import MlflowClient

        self.cfg = cfg
        self.uri = resolve_uri(cfg)
        check_reachable(self.uri, cfg.connect_timeout)
        self.client = MlflowClient(self.uri)
        self._run_id: str | None = None
        self._monitor: Any = None
        self.failures = 0  # logging calls that failed (warned, never fatal to training)

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            kind = experiment.tags.get(EXPERIMENT_KIND_TAG, "")
            if not kind or kind.endswith("_inferred") or kind == "no_inferred_type":
                # made elsewhere (mlflow's UI, a script, an older Tubelet) or guessed by the UI: these are
                # training runs; a kind someone chose (e.g. genai_development) is left as it is
                with contextlib.suppress(Exception):
                    self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # artifacts next to the database, not in the cwd
            location = (Path(self.uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
        try:
            # The kind tag makes MLflow 3's UI open the experiment as model training (runs, charts),
            # not as a GenAI experiment (traces).
            return self.client.create_experiment(self.cfg.experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except Exception:  # created meanwhile by another job
            experiment = self.client.get_experiment_by_name(self.cfg.experiment)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start(self, run_name: str = "", params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
              config: Any = None, resume_run_id: str = "") -> MlflowTracker:
        """Create the run; ``config`` (a job dataclass) gives the params, its hash and config.toml.

        ``resume_run_id`` continues an existing run (a resumed training job logs into the run it
        started, so its charts have no gap and no twin). ``tracking.run_id`` names a run made
        beforehand (jobs.pipeline creates each stage's child run): it wins over ``resume_run_id``,
        and the run gets its params and config.toml on the first start that finds it without any.
        """
        resume_run_id = self.cfg.run_id or resume_run_id
        if resume_run_id:
            try:
                self.client.update_run(resume_run_id, status="RUNNING")
                fresh = (config is not None or bool(params)) and not self.client.get_run(resume_run_id).data.params
            except Exception as exc:
                raise TrackingError(f"cannot resume MLflow run {resume_run_id}: {str(exc).splitlines()[0]}") from None
            self._run_id = resume_run_id
            if fresh:
                self._log_params(safe_params({**run_params(config), **(params or {})}))
                if config is not None:
                    self.log_text(redact_url(to_toml(config)), "config.toml")
            if tags:  # e.g. the world size of this launch, which may differ from the last one
                self.set_tags(tags)
            if self.cfg.system_metrics:
                self._start_system_metrics()
            return self
        all_tags = {"host": socket.gethostname()}
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if self.cfg.parent_run_id:
            all_tags["mlflow.parentRunId"] = self.cfg.parent_run_id  # how MLflow nests runs
        if config is not None:
            all_tags["config_hash"] = config_hash(config)
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        try:
            run = self.client.create_run(self._experiment_id(), run_name=run_name or self.cfg.run_name or None,
                                         tags=all_tags)
        except Exception as exc:
            raise TrackingError(f"cannot create an MLflow run at {redact_url(self.uri)}: "
                                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._run_id = run.info.run_id
        merged = {**run_params(config), **(params or {})}
        self._log_params(safe_params(merged))
        if config is not None:
            self.log_text(redact_url(to_toml(config)), "config.toml")
        if self.cfg.system_metrics:
            self._start_system_metrics()
        return self

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(self._run_id, params=items[i:i + 100])

    def _start_system_metrics(self) -> None:
        # The monitor class directly (not mlflow.enable_system_metrics_logging): it takes our URI
        # and run id, so no global mlflow state decides where the samples go.
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self._run_id, sampling_interval=self.cfg.system_metrics_interval,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        """Run a logging call; a failure is counted and warned about, never fatal to a long run."""
        if self._run_id is None:
            raise TrackingError(f"{what} before start(): call tracker.start() first")
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # the store is external: network, disk, server errors
            self.failures += 1
            log.warning("MLflow %s failed (%d so far): %s", what, self.failures, str(exc).splitlines()[:1])

    def log_metrics(self, metrics: dict[str, float | None], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._guard("log_metrics", self.client.log_batch, self._run_id, metrics=items)

    def log_image(self, image: Any, name: str, step: int) -> None:
        """``image``: uint8 ``[H, W, 3]`` array or a PIL image; shown per step in MLflow's UI."""
        self._guard("log_image", self.client.log_image, self._run_id, image, key=name, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard("log_artifact", self.client.log_artifact, self._run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guard("log_text", self.client.log_text, self._run_id, text, artifact_file)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self._guard("log_dict", self.client.log_dict, self._run_id, data, artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact_url(str(v))) for k, v in tags.items()]
        self._guard("set_tags", self.client.log_batch, self._run_id, tags=items)

    def end(self, status: str = "FINISHED") -> None:
        """Stop system metrics (flushing them) and close the run; safe to call twice."""
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self._run_id is not None:
            self._guard("end", self.client.set_terminated, self._run_id, status)
            self._run_id = None

    def __enter__(self) -> MlflowTracker:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.end("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))


def make_tracker(cfg: TrackingConfig, rank: int = 0) -> MlflowTracker | NullTracker:
    """The one place that looks at the rank: MLflow on rank 0 when enabled, else a NullTracker."""
    if rank != 0 or not cfg.enabled:
        return NullTracker()
    return MlflowTracker(cfg)


def child_config(cfg: TrackingConfig, parent_run_id: str, run_name: str = "", run_id: str = "") -> TrackingConfig:
    """The section for a stage run nested under ``parent_run_id`` (jobs.pipeline); ``run_id``: the
    child run made beforehand, which the stage logs into."""
    return dataclasses.replace(cfg, parent_run_id=parent_run_id, run_name=run_name or cfg.run_name,
                               run_id=run_id or cfg.run_id)


# --------------------------------------------------------------------------------------------
# Runs looked up by id (jobs.pipeline's parent and stage runs): never raise, an unknown id is "no"


@functools.lru_cache(maxsize=8)
def _client(uri: str, registry_uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=registry_uri)


def run_is_active(uri: str, run_id: str | None) -> bool:
    """Is ``run_id`` a run of this store (not deleted)? Outputs may outlive a wiped MLflow database."""
    if not run_id:
        return False
    try:
        return _client(uri).get_run(run_id).info.lifecycle_stage == "active"
    except Exception:  # noqa: BLE001 — MLflow raises its RestException for an unknown id
        return False


def close_run(uri: str, run_id: str, status: str) -> None:
    """End a run another process left open (a killed worker cannot close its own); a FINISHED
    run that its process already closed is left as it is."""
    client = _client(uri)
    with contextlib.suppress(Exception):
        if client.get_run(run_id).info.status == "RUNNING" or status != "FINISHED":
            client.set_terminated(run_id, status)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """``[(step, value), ...]`` of one metric of a run, by step; empty when there is none."""
    try:
        return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))
    except Exception:  # noqa: BLE001
        return []


def is_registered(uri: str, name: str, run_id: str) -> bool:
    """Does the model registry of ``uri`` hold a version of ``name`` made from ``run_id``?"""
    try:
        return bool(_client(uri, uri).search_model_versions(f"name='{name}' and run_id='{run_id}'"))
    except Exception:  # noqa: BLE001 — no such registered model yet
        return False


# --------------------------------------------------------------------------------------------
# Pictures


def reconstruction_grid(original: np.ndarray, masked: np.ndarray, recon: np.ndarray, frames: int = 8,
                        gap: int = 2) -> np.ndarray:
    """One picture: rows original | masked input | reconstruction, ``frames`` evenly spaced columns.

    Up to 8 columns: a wide picture, which MLflow's image card shows whole below the run's params.

    Inputs are uint8 ``[T, H, W, 3]`` clips of one sample; returns uint8
    ``[3H + 2 gap, F W + (F - 1) gap, 3]`` with white gaps (no text: nothing to render fonts with).
    """
    clips = [np.asarray(c) for c in (original, masked, recon)]
    for name, clip in zip(("original", "masked", "recon"), clips):
        if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"{name} must be uint8 [T, H, W, 3], got {clip.dtype} {list(clip.shape)}")
    if not clips[0].shape == clips[1].shape == clips[2].shape:
        raise ValueError(f"clip shapes differ: {[list(c.shape) for c in clips]}")
    t, h, w, _ = clips[0].shape
    n = max(1, min(frames, t))
    index = [round(i * (t - 1) / max(1, n - 1)) for i in range(n)] if n > 1 else [0]
    out = np.full((3 * h + 2 * gap, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for row, clip in enumerate(clips):
        for col, frame in enumerate(index):
            y, x = row * (h + gap), col * (w + gap)
            out[y:y + h, x:x + w] = clip[frame]
    return out


__all__ = ["MlflowTracker", "NullTracker", "Tracker", "TrackingConfig", "TrackingError", "check_reachable",
           "CHART_KEYS", "chart_keys", "child_config", "close_run", "experiment_id_of", "experiment_ui_url", "git_commit", "is_registered",
           "make_tracker", "metric_history",
           "reconstruction_grid", "redact_url", "resolve_uri", "run_is_active", "safe_params"]


# ------------------------------------------------------------------------------------------
# Model registry and run artifacts (for pipeline.train.model_registry: this module alone imports mlflow)


def _registry_client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def model_version_source(tracking_uri: str, name: str, alias: str = "", version: str = "") -> str:
    """The storage uri of a registered model version's files (by alias, else by number)."""
    client = _registry_client(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except Exception as exc:  # mlflow raises its RestException with a multi-line message
        raise TrackingError(f"not found in the registry at {redact_url(tracking_uri)}: {_first_line(exc)}") from None
    return str(found.source)


def run_artifact_uri(tracking_uri: str, run_id: str) -> str:
    """The storage uri of an MLflow run's artifact root."""
    try:
        return str(_registry_client(tracking_uri).get_run(run_id).info.artifact_uri)
    except Exception as exc:  # noqa: BLE001 - one line, whatever mlflow raised
        raise TrackingError(f"run {run_id} not found at {redact_url(tracking_uri)}: {_first_line(exc)}") from None


def register_version(tracking_uri: str, run_id: str, name: str, files: list[Path], artifact_path: str = "model",
                     tags: dict[str, str] | None = None) -> str:
    """Log ``files`` as the run's ``artifact_path/`` artifacts and register a version of ``name`` from
    them (creating the model if needed) with ``tags``; returns the version number. Aliases are
    moved separately (:func:`set_alias`), by whoever decides that the version earned one."""
    client = _registry_client(tracking_uri)
    for file in files:
        client.log_artifact(run_id, str(file), artifact_path)
    try:
        client.get_registered_model(name)
    except Exception:  # absent: the first version creates it
        client.create_registered_model(name, description="Tubelet video classifier (state dict + model.json)")
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or None)
    return str(version.version)


def alias_holder(tracking_uri: str, name: str, alias: str) -> tuple[str, dict[str, str], str] | None:
    """``(version, tags, run_id)`` of the version of ``name`` that ``alias`` points at; None when no
    version holds it (or the model is not registered yet)."""
    try:
        found = _registry_client(tracking_uri).get_model_version_by_alias(name, alias)
    except Exception as exc:  # noqa: BLE001 — an unknown model or alias; anything else is not "no holder"
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise TrackingError(f"cannot read @{alias} of {name} at {redact_url(tracking_uri)}: {_first_line(exc)}") from None
    return str(found.version), dict(found.tags or {}), str(found.run_id or "")


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    """Point ``alias`` of the registered model ``name`` at ``version``."""
    _registry_client(tracking_uri).set_registered_model_alias(name, alias, version)


def registered_versions(tracking_uri: str, name: str, run_id: str) -> list[str]:
    """The version numbers of ``name`` registered from ``run_id``, oldest first (empty when none)."""
    try:
        found = _registry_client(tracking_uri).search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except Exception:  # noqa: BLE001 — no such registered model yet
        return []
    return sorted((str(v.version) for v in found), key=int)


__all__ += ["alias_holder", "model_version_source", "register_version", "registered_versions", "run_artifact_uri",
            "set_alias"]
