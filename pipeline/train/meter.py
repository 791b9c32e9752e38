"""Throughput over a logging window (clips/s, tokens/s, data-wait fraction, achieved FLOP/s, ETA),
and where a job's start-up went, from the launch on the driver to the first optimizer step."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch


@dataclass
class Meter:
    """Accumulates one window of steps; ``window()`` returns its rates and starts the next one."""

    clips_per_step: int  # global: views per optimizer step over all ranks
    tokens_per_clip: int  # encoder-visible + decoder tokens processed per clip
    flops_per_clip: float  # forward + backward model FLOPs per clip (analytic)
    total_steps: int
    _start: float = field(default_factory=time.monotonic)
    _data_time: float = 0.0
    _steps: int = 0
    _syncs: int = 0  # host-sync counter at the window's start
    first_step_at: float | None = None  # time.time() when the first step ended (the start-up clock's last mark)

    def data_wait(self, seconds: float) -> None:
        self._data_time += seconds

    def step(self) -> None:
        self._steps += 1
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def window(self, step: int, host_syncs: int | None = None) -> dict[str, float]:
        """Rates since the last window; ``host_syncs`` (the process's running count of collective
        results read on the host, :func:`pipeline.train.comm.host_syncs`) adds ``host_syncs_per_step``."""
        now = time.monotonic()
        elapsed = max(now - self._start, 1e-9)
        clips = self._steps * self.clips_per_step
        out = {
            "clips_per_s": clips / elapsed,
            "tokens_per_s": clips * self.tokens_per_clip / elapsed,
            "data_wait_frac": min(1.0, self._data_time / elapsed),
            "model_flops_per_s": clips * self.flops_per_clip / elapsed,
            "step_time_s": elapsed / max(self._steps, 1),
        }
        out["eta_s"] = out["step_time_s"] * max(self.total_steps - step, 0)
        if torch.cuda.is_available():  # this rank's peak since the start (what an OOM would exceed)
            out["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if host_syncs is not None:
            out["host_syncs_per_step"] = (host_syncs - self._syncs) / max(self._steps, 1)
            self._syncs = host_syncs
        self._start, self._data_time, self._steps = now, 0.0, 0
        return out


class StartupClock:
    """Wall-clock marks of a job's start-up, in the order they happen: ``launch`` (the driver calls
    :func:`~pipeline.orchestration.ray_train.fit`), ``ray`` (Ray is up), ``workers`` (this rank's
    loop starts: Ray Train's controller, the worker group and its process group are up),
    ``engine`` (model built, DeepSpeed engine made, checkpoint restored), ``tracking`` (the MLflow
    run started) and ``first_step`` (the first optimizer step done, first batch included).

    Marks are ``time.time()`` seconds: they are taken in different processes (the driver, each
    worker), maybe on different hosts, so a monotonic clock would not do.
    """

    PHASES = ("launch", "ray", "workers", "engine", "tracking", "first_step")

    def __init__(self, marks: dict[str, float] | None = None) -> None:
        self.marks: dict[str, float] = dict(marks) if marks else {"launch": time.time()}

    def mark(self, phase: str, at: float | None = None) -> None:
        """Record the end of ``phase``, now or ``at`` (the first time only: a restarted worker group keeps its launch)."""
        if phase not in self.PHASES:
            raise ValueError(f"unknown start-up phase {phase!r}: one of {', '.join(self.PHASES)}")
        self.marks.setdefault(phase, time.time() if at is None else at)

    def seconds(self) -> dict[str, float]:
        """Each marked phase's duration: from the previous mark (in :attr:`PHASES` order) to its own."""
        marked = [p for p in self.PHASES if p in self.marks]
        return {p: max(0.0, self.marks[p] - self.marks[q]) for q, p in zip(marked, marked[1:])}

    def metrics(self) -> dict[str, float]:
        """``startup/<phase>_s`` per phase and ``startup/total_s``, from the launch to the last mark."""
        seconds = self.seconds()
        return {**{f"startup/{p}_s": round(v, 3) for p, v in seconds.items()},
                "startup/total_s": round(sum(seconds.values()), 3)}

    def summary(self) -> str:
        """One line: ``start-up 41.3 s: ray 5.1 s, workers 20.3 s, ...``."""
        seconds = self.seconds()
        parts = ", ".join(f"{p.replace('_', ' ')} {v:.1f} s" for p, v in seconds.items())
        return f"start-up {sum(seconds.values()):.1f} s: {parts}"


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
