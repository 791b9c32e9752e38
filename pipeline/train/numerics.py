"""The guard against non-finite losses, shared by the training loops.

bf16 has no loss scaler to skip a bad step, so one NaN or inf loss would reach the fp32 master
weights through its gradients. Every micro-batch's loss is checked before its backward: when it
is not finite on any rank, every rank skips that micro-batch (no backward, no ``engine.step()``,
so DeepSpeed's micro-step counters stay in step on all ranks) and takes the next batch.
``limit`` such losses in a row stop the job, naming the step and the last good checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.core.errors import TubeletError
from pipeline.train import comm

log = logging.getLogger(__name__)


class NonFiniteLossError(TubeletError):
    """The loss stayed NaN/inf for ``train.max_nonfinite`` micro-batches in a row."""


@dataclass
class NonFiniteGuard:
    """Counts skipped micro-batches (``skipped``: in all; ``in_a_row``: since the last finite loss)."""

    limit: int
    run_dir: str  # where the run's checkpoints live, for the stop message
    last_checkpoint: int = -1  # step of the newest checkpoint written or restored (-1: none yet)
    skipped: int = 0
    in_a_row: int = 0

    def skip(self, loss: torch.Tensor, step: int) -> bool:
        """True (on every rank) when some rank's ``loss`` is not finite: skip this micro-batch.

        One collective and one host sync per micro-batch: the decision must be known before the
        backward, and the same on every rank (a rank that skipped alone would desynchronise the
        gradient reduction).
        """
        if not comm.any_rank(~torch.isfinite(loss.detach())):
            self.in_a_row = 0
            return False
        self.skipped += 1
        self.in_a_row += 1
        log.warning("step %d: non-finite loss on some rank, micro-batch skipped (%d in a row, %d in all)",
                    step, self.in_a_row, self.skipped)
        if self.in_a_row >= self.limit:
            last = (f"step {self.last_checkpoint} in {self.run_dir}" if self.last_checkpoint >= 0
                    else f"none yet in {self.run_dir}")
            raise NonFiniteLossError(
                f"step {step}: {self.in_a_row} non-finite losses in a row (train.max_nonfinite={self.limit}); "
                f"last good checkpoint: {last}; lower optim.lr or set deepspeed.grad_clip, then relaunch the "
                "same run.name to resume from it")
        return True


@dataclass
class NonFiniteFault:
    """Fault injection for tests (``train.fault_nonfinite_*``): from optimizer step ``at_step`` on,
    the last rank's next ``count`` losses are inf (the other ranks' stay finite)."""

    at_step: int = -1
    count: int = 0
    on_this_rank: bool = False
    injected: int = 0

    def __call__(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        if not self.on_this_rank or self.at_step < 0 or step < self.at_step or self.injected >= self.count:
            return loss
        self.injected += 1
        return loss * float("inf")


__all__ = ["NonFiniteFault", "NonFiniteGuard", "NonFiniteLossError"]
