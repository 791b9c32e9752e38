"""Where Ray starts, and how a per-rank loop runs on Ray Train workers.

:func:`fit` runs ``loop(cfg, session)`` (``pretrain``, ``finetune``, ``evaluate`` or ``extract``,
each handed in as itself) on every worker with a :class:`RayTrainSession` (rank, world size,
checkpoints in the run's storage). Ray is an embedded Ray on this machine by default, a cluster
when asked: ``RAY_ADDRESS`` (or an explicit address) connects to a running cluster; otherwise
``ray.init(address="local")`` starts a fresh embedded Ray that only this process uses and that
is shut down when the job ends. A Ray already initialised by the caller (a test, a Ray job's
driver) is reused and left running.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import ray

from pipeline.core import io as sio
from pipeline.core.errors import TubeletError
from pipeline.core.job_env import JOB_ENV
from pipeline.orchestration.console import CONSOLE_ENV, WorkerLogs, log_path, mark_worker_logs

log = logging.getLogger(__name__)

# Environment a remote worker needs to reach the same storage and tracking server as the driver
# (the list a submitter sends too). Values travel in the runtime env; we never log them, but
# Ray's runtime-env agent does.
FORWARDED_ENV = JOB_ENV


# FORWARDED_ENV as it was when ray_session started an embedded Ray: its workers inherit these.
_inherited: dict[str, str] | None = None


def forwarded_env() -> dict[str, str]:
    """What a worker must be given to see this process's storage/tracking env.

    Ray writes runtime envs, values included, into its session logs on disk: nothing the
    workers of an embedded Ray started here already inherited is put there (credentials).
    """
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    if _inherited is not None:
        env = {k: v for k, v in env.items() if _inherited.get(k) != v}
    return env


# Ray Train services with nothing to do in an embedded Ray (one node, serving one process): the
# preemption watcher (an actor per worker group, watching for nodes being drained: an embedded
# Ray has no other node to move to) and the controller's and workers' metrics (exported for a
# dashboard that an embedded Ray does not run). Leaving them out saves a process and its start
# at every job's start-up (benchmarks/bench_startup.py). A value the user set wins.
EMBEDDED_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
# "all": keep every Ray Train service, also those :func:`idle_services` leaves out
RAY_TRAIN_SERVICES_ENV = "TUBELET_RAY_TRAIN_SERVICES"


def _forget_inherited() -> None:
    global _inherited
    _inherited = None


@contextmanager
def embedded_env() -> Iterator[None]:
    """:data:`EMBEDDED_RAY_ENV` in this process while an embedded Ray lives: its processes inherit
    it, and Ray Train's driver side reads it when a trainer starts."""
    saved = {k: os.environ.get(k) for k in EMBEDDED_RAY_ENV}
    os.environ.update({k: v for k, v in EMBEDDED_RAY_ENV.items() if k not in os.environ})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Start an embedded Ray whose servers listen on 127.0.0.1 only.

    Ray binds GCS, raylet, workers and agents to the node IP, which it takes from the default
    route (``_node_ip_address="127.0.0.1"`` is turned back into that IP). Its single-machine
    mode (``ENABLE_RAY_CLUSTER`` off, as on macOS) makes the node IP loopback. An embedded Ray
    serves this process only; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` asks for the old binding.
    """
    from ray._private import ray_constants

    if os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR):
        yield  # configured explicitly: Ray decides
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by ray.init when it picks the node IP
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextmanager
def quiet_console(path: Path | None) -> Iterator[Path | None]:
    """While Ray runs (after ``ray.init(log_to_driver=True)``): worker lines to ``path``, ours to
    the console; yields the path (None when nothing changed: no path, or ``TUBELET_CONSOLE=all``)."""
    if path is None or os.environ.get(CONSOLE_ENV, "").lower() == "all":
        yield None
        return
    from ray._private.worker import global_worker_stdstream_dispatcher as dispatcher  # where Ray's printer hangs

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as file:
        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ray_print_logs", WorkerLogs(file))
        log.info("worker logs: %s (Ray's and the libraries' messages; %s=all prints them here)", path, CONSOLE_ENV)
        try:
            yield path
        finally:
            dispatcher.remove_handler("ray_print_logs")  # ray.shutdown removes it too: either may come first


def token_note() -> str:
    """Say where the token of a Ray that uses token authentication is kept, when it is a file
    (Ray 2.60 writes one to ``~/.ray/auth_token`` for a new local Ray if none exists)."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return ""
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    note = (f"Ray token authentication: the token is in {path} (Ray made it if it was missing; "
            "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN name another)")
    log.info("%s", note)
    return note


@contextmanager
def ray_session(address: str = "", num_cpus: int | None = None, log_file: Path | None = None
                ) -> Iterator[dict[str, Any]]:
    """Connect to Ray for the duration of a job; yields the cluster's resources.

    ``log_file``: where the lines Ray streams from workers go (:func:`quiet_console`:
    ours still reach the console); None prints them all, as Ray does."""
    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    global _inherited
    address = address or os.environ.get("RAY_ADDRESS", "")
    with ExitStack() as stack:
        if address:
            # A submitted job's driver already has the job's env_vars, as will every worker; Ray
            # refuses a ray.init that names any of those keys again (RAY_OVERRIDE_JOB_RUNTIME_ENV).
            job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
            runtime_env = {"env_vars": {k: v for k, v in forwarded_env().items() if k not in job_env.get("env_vars", {})}}
            # Ray 2.60 clusters use token auth, but ray.init(address) never turns it on by itself.
            token_file = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token"))
            if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN") or os.path.exists(token_file)):
                os.environ["RAY_AUTH_MODE"] = "token"
            log.info("connecting to Ray at %s", address)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            # Logical CPUs may exceed the physical ones: Ray Train's controller needs a slot of its own.
            # Its processes are our children and inherit this environment: no runtime env needed.
            _inherited = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
            stack.callback(_forget_inherited)
            stack.enter_context(embedded_env())
            with _loopback_node():
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
            token_note()
        with quiet_console(log_file):
            try:
                yield ray.cluster_resources()
            finally:
                ray.shutdown()


class RayTrainSession:
    """:class:`pipeline.train.session.Session` on Ray Train V2: the worker's rank and world size from
    Ray Train's context, checkpoints in the run's storage.

    Each rank stages its part of a checkpoint in a local temporary folder and reports it; Ray
    Train merges the ranks' files into one checkpoint folder in storage (local or ``s3://``)
    and keeps the last ``num_to_keep``.
    """

    def __init__(self, find_checkpoint: Any = None, startup: dict[str, float] | None = None) -> None:
        import ray.train

        from pipeline.train.meter import StartupClock

        context = ray.train.get_context()
        self.rank, self.local_rank = context.get_world_rank(), context.get_local_rank()
        self.world_size = context.get_world_size()
        self.find_checkpoint = find_checkpoint  # () -> newest complete checkpoint uri of the run, or None
        self.startup = StartupClock(startup)  # the driver's marks (launch, ray); this worker's from here
        self.startup.mark("workers")

    @contextmanager
    def restore_dir(self) -> Iterator[str | None]:
        """The run's newest complete checkpoint in storage (any launch), as a local folder.

        From ``s3://`` each rank fetches only what it reads: the shared files and its own shard
        (:func:`pipeline.train.checkpoint.files_for_rank`), not every rank's.
        """
        uri = self.find_checkpoint() if self.find_checkpoint else None
        if not uri:
            yield None
            return
        log.info("rank %d restores from %s", self.rank, uri)
        if not uri.startswith("s3://"):
            yield uri
            return
        import tempfile

        from pipeline.train.checkpoint import fetch_for_rank

        with tempfile.TemporaryDirectory(prefix="tubelet-resume-") as tmp:
            fetch_for_rank(uri, Path(tmp), self.rank, self.world_size, self.local_rank)
            yield tmp

    def staging_dir(self, step: int) -> Any:
        import tempfile

        return Path(tempfile.mkdtemp(prefix=f"tubelet-ckpt-{step:08d}-rank{self.rank}-"))

    def report(self, metrics: dict[str, Any], checkpoint_dir: Any) -> None:
        import shutil

        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        clean = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        ray.train.report(clean, checkpoint=checkpoint)
        if checkpoint_dir:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # uploaded: the local copy is not needed


def _train_worker(config: dict[str, Any]) -> None:
    """Every Ray Train worker: threads, logging, then ``loop(cfg, session)``.

    The worker's CPUs are shared with its loader processes (each single-threaded: PyTorch's
    DataLoader sets one thread per worker process), so the training process takes what they
    leave: ``cpus_per_worker - loader_workers`` threads, at least one, unless
    ``scaling.torch_threads`` says otherwise.

    Relaunching a run by name, or restarting workers after a crash, continues from the run's
    newest complete checkpoint in storage, looked up by the workers themselves: Ray Train V2
    hands back no checkpoint of an earlier launch nor, here, after a worker-group restart.
    """
    import torch

    from pipeline.train.checkpoint import latest_checkpoint

    cfg, loop = config["cfg"], config["loop"]
    loaders = config["loader_workers"]
    torch.set_num_threads(cfg.scaling.torch_threads or max(1, cfg.scaling.cpus_per_worker - loaders))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    mark_worker_logs()  # our lines reach the user's console; Ray's go to the job's worker log
    run_dir = sio.join(cfg.run.output, cfg.run.name)
    loop(cfg, RayTrainSession(find_checkpoint=lambda: latest_checkpoint(run_dir), startup=config.get("startup")))


def worker_error(error: BaseException) -> TubeletError | None:
    """The user-fixable error (bad data, bad checkpoint...) a worker failed with, if that is why
    the run failed: raised as itself it becomes one line, not Ray Train's wrapped traceback."""
    failures = getattr(error, "worker_failures", None) or {}
    for exc in failures.values():
        for candidate in (getattr(exc, "_base_exc", None), exc.__cause__, exc):
            if not isinstance(candidate, TubeletError):
                continue
            if type(candidate).__module__.startswith("pipeline."):
                return candidate
            # Ray's dual class (RayTaskError + ours) carries the worker's traceback in its text.
            ours = next(c for c in type(candidate).__mro__ if c.__module__.startswith("pipeline."))
            lines = str(candidate).strip().splitlines()
            return ours(lines[-1].split(": ", 1)[-1] if lines else ours.__name__)
    return None


def final_error(error: BaseException) -> bool:
    """Whether a failed worker group failed with an error that running again cannot change (a
    :class:`TubeletError` that is not ``retryable``: config, data, weights): not worth a restart."""
    found = worker_error(error)
    return found is not None and not found.retryable


def failure_policy(failure_config: Any) -> Any:
    """Ray Train's failure policy for ``failure_config``, except that a :func:`final_error` fails the
    run at once: ``scaling.max_failures`` restarts workers after crashes, not after an error that
    would come back."""
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy, FailureDecision

    class Policy(DefaultFailurePolicy):
        def make_decision(self, training_failed_error: Any) -> Any:
            if final_error(training_failed_error):
                return FailureDecision.RAISE
            return super().make_decision(training_failed_error)

    return Policy(failure_config)


def idle_services(callbacks: list[Any], *, datasets: bool, dashboard: bool) -> list[Any]:
    """Ray Train's default controller callbacks that have nothing to do here, and cost a process
    each at every job's start (``benchmarks/bench_startup.py``):

    - the dataset callback without Ray Datasets (our loaders read WebDataset shards): it starts a
      ``DatasetManager`` actor before the workers may run, and ships every worker a Ray Data
      context (importing Ray Data there);
    - the placement-group cleaner without a dashboard: it watches the controller through the
      State API, which needs the dashboard, so it can clean nothing and logs a failure a second.

    ``TUBELET_RAY_TRAIN_SERVICES=all`` keeps them all.
    """
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    idle: tuple[type, ...] = ()
    if os.environ.get(RAY_TRAIN_SERVICES_ENV, "").lower() == "all":
        return []
    if not datasets:
        idle += (DatasetsCallback,)
    if not dashboard:
        idle += (PlacementGroupCleanerCallback,)
    return [cb for cb in callbacks if isinstance(cb, idle)]


def _trainer_class() -> type:
    """TorchTrainer with :func:`failure_policy` and without :func:`idle_services`. Ray Train has
    no option for either: the two private methods that hand its controller the policy and the
    callbacks are wrapped."""
    from ray._private.worker import get_dashboard_url
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):
        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            kwargs["failure_policy"] = failure_policy(self.run_config.failure_config)
            return super()._initialize_and_run_controller(**kwargs)

        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            idle = idle_services(callbacks, datasets=bool(self.datasets), dashboard=bool(get_dashboard_url()))
            return [cb for cb in callbacks if cb not in idle]

    return Trainer


class FitConfig(Protocol):
    """What :func:`fit` reads of a job config: ``run.name``, ``run.output`` and the ``scaling`` section
    (``num_workers``, ``use_gpu``, ``cpus_per_worker``, ``max_failures``, ``torch_threads``)."""

    run: Any
    scaling: Any


def fit(cfg: FitConfig, loop: Callable[[Any, Any], Any], *, keep_checkpoints: int | None = None,
        loader_workers: int = 0, storage: tuple[str, Any] | None = None) -> Any:
    """Run ``loop(cfg, session)`` on ``cfg.scaling.num_workers`` Ray Train workers and return the
    Result. ``keep_checkpoints``: how many checkpoints Ray Train keeps (None: all; the training
    jobs pass ``train.keep_checkpoints``). ``loader_workers``: loader processes per worker
    (``data.num_workers``), whose CPUs the training process leaves them. ``storage``: Ray Train's
    ``(storage_path, filesystem)``; default: the run's own output (:func:`storage_for`), where
    the training jobs keep their checkpoints.

    Inside :func:`ray_session` (embedded Ray, or the cluster at ``RAY_ADDRESS``); a worker's
    :class:`TubeletError` is raised as itself (and, unless ``retryable``, never retried), any other
    failure as Ray Train's error.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError

    startup = {"launch": time.time()}  # the start-up clock's first marks; the workers add theirs
    storage_path, storage_fs = storage or storage_for(cfg.run.output)
    # Logical CPUs may exceed physical ones: Ray Train's controller needs a slot besides the workers.
    cpus = max(os.cpu_count() or 1, cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + 1)
    with ray_session(num_cpus=cpus, log_file=log_path(sio.join(cfg.run.output, cfg.run.name))):  # before the trainer
        startup["ray"] = time.time()
        trainer = _trainer_class()(  # a worker's config / data error is not retried: it would fail again
            _train_worker,
            train_loop_config={"cfg": cfg, "loop": loop, "loader_workers": loader_workers, "startup": startup},
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                         resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
            run_config=RunConfig(name=cfg.run.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                 # the driver's storage / tracking env, also when Ray was started by someone else
                                 worker_runtime_env={"env_vars": forwarded_env()},
                                 failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
        )
        try:
            result = trainer.fit()  # Ray Train V2 raises what V1 returned in result.error
        except TrainingFailedError as exc:
            raise worker_error(exc) or exc from None
    if result.error is not None:
        raise worker_error(result.error) or result.error
    return result


def scratch_storage(output: str) -> tuple[str, None]:
    """Ray Train's run folder for jobs that keep no checkpoints (evaluation, extraction):
    ``<output>/.ray`` for a local output, ``runs/.ray`` when the output is remote."""
    return os.path.abspath(os.path.join(output if not sio.is_remote(output) else "runs", ".ray")), None


def storage_for(uri: str) -> tuple[str, Any]:
    """Ray Train ``(storage_path, storage_filesystem)`` for a local folder or an ``s3://`` prefix."""
    if not uri.startswith("s3://"):
        return os.path.abspath(uri), None
    import pyarrow.fs

    endpoint = os.environ.get("S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host, scheme=scheme or "https")
    if os.environ.get("AWS_DEFAULT_REGION"):
        kwargs["region"] = os.environ["AWS_DEFAULT_REGION"]
    return uri[len("s3://"):], pyarrow.fs.S3FileSystem(**kwargs)
