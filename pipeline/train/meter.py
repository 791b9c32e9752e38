"""Throughput over a logging window: clips/s, tokens/s, data-wait fraction, achieved FLOP/s, ETA."""

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

    def data_wait(self, seconds: float) -> None:
        self._data_time += seconds

    def step(self) -> None:
        self._steps += 1

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


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
