"""What a job prints while Ray runs it: our own lines (progress, warnings, the summary), not Ray's
and the libraries' chatter, which goes to a log file whose path is printed once.

Ray streams every line its workers and actors write to the driver's console ("log to driver"):
Ray Train's controller, placement-group cleaner and per-rank checkpoint reports, deprecation
warnings, DeepSpeed's and MLflow's start-up messages. Our code in a Ray Train worker logs through
the ``pipeline`` logger with a handler that starts each line with :data:`MARK`
(:func:`mark_worker_logs`); on the driver, :func:`pipeline.orchestration.ray_train.quiet_console`
swaps Ray's printer for :class:`WorkerLogs`, which writes every streamed line to the log file and
prints only the marked ones, without the mark. ``TUBELET_CONSOLE=all`` keeps Ray's printer
(everything on the console).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from pipeline.core import io as sio

log = logging.getLogger(__name__)

MARK = "[tubelet] "
CONSOLE_ENV = "TUBELET_CONSOLE"  # "all": every worker line on the console, as Ray prints them


def mark_worker_logs() -> None:
    """In a Ray Train worker: the ``pipeline`` logger's lines start with :data:`MARK` (warnings
    with their level), on stderr, and do not also go through Ray's own handlers."""
    logger = logging.getLogger("pipeline")
    if any(getattr(h, "tubelet_mark", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MarkFormatter())
    handler.tubelet_mark = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _MarkFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname}: {text}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return "\n".join(MARK + line for line in text.splitlines())


class WorkerLogs:
    """Ray's "print logs" handler: every streamed line to ``file`` (with its process), the
    :data:`MARK` ed ones also to the console."""

    def __init__(self, file: IO[str], stdout: IO[str] | None = None, stderr: IO[str] | None = None) -> None:
        self.file, self.stdout, self.stderr = file, stdout, stderr

    def __call__(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        where = f"{who} pid={data.get('pid')}" + (f", ip={data['ip']}" if data.get("ip") != data.get("localhost") else "")
        sink = (self.stderr or sys.stderr) if data.get("is_err") else (self.stdout or sys.stdout)
        for line in data.get("lines", []):
            self.file.write(f"({where.strip()}) {line}\n")
            if line.startswith(MARK):
                print(line[len(MARK):], file=sink, flush=True)
        self.file.flush()


def log_path(run_dir: str) -> Path:
    """Where a job's worker log goes: ``<run_dir>/logs/ray-<time>.log`` for a local run folder,
    the system's temporary folder for a remote one (``s3://``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if run_dir and not sio.is_remote(run_dir):
        return Path(run_dir).absolute() / "logs" / f"ray-{stamp}.log"
    name = run_dir.rstrip("/").rsplit("/", 1)[-1] or "job"
    return Path(tempfile.gettempdir()) / "tubelet-logs" / f"{name}-ray-{stamp}-{os.getpid()}.log"
