"""Every collective the pipeline issues, and the device they (and the training) run on.

    device = training_device()            # cuda:LOCAL_RANK under GPUs, else cpu
    loss = reduce_mean(loss)              # tensor on the training device, no host sync
    stop = any_rank(not_finite)           # one collective, one host sync
    parts = gather_objects(local)         # every rank's picklable object

NCCL serves CUDA tensors only: a collective on a CPU tensor works under gloo (every CPU test)
and fails on the first call under NCCL. So each function here moves its tensor to
:func:`training_device` itself, whatever device the caller's tensor lives on, and no other
module under ``pipeline/`` calls a ``torch.distributed`` collective (a test holds the line).

Reading a collective's result on the host (``bool``/``float``) waits for the device: such host
syncs are counted (:func:`host_syncs`) so the training loops can report how many a step costs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from pipeline.core.errors import TubeletError

_host_syncs = 0


class PlacementError(TubeletError):
    """A parameter or an input of the model is not on the device the rank trains on."""


def training_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when GPUs are visible (one per rank), else ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def host_syncs() -> int:
    """Collective results read on the host so far in this process (each one waits for the device)."""
    return _host_syncs


def _to_host(value: torch.Tensor) -> torch.Tensor:
    global _host_syncs
    _host_syncs += 1
    return value.cpu()


def _on_device(value: torch.Tensor) -> torch.Tensor:
    # A copy, so the caller's tensor is never reduced in place (nor moved when already there).
    return value.detach().to(training_device(), copy=True)


def all_reduce(value: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``value`` reduced over ranks (``sum`` | ``max`` | ``min``), on the training device."""
    out = _on_device(value)
    if is_distributed() and dist.get_world_size() > 1:
        dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return out


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks, as float32 on the training device (no host sync)."""
    _, world = rank_world()
    return all_reduce(value.float(), "sum") / world


def mean_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Means over ranks of several scalars in one collective and one host sync."""
    if not values:
        return {}
    stacked = torch.stack([v.detach().float().reshape(()).to(training_device()) for v in values.values()])
    means = _to_host(reduce_mean(stacked)).tolist()
    return dict(zip(values, means))


def any_rank(flag: bool | torch.Tensor) -> bool:
    """True on every rank when ``flag`` is true on any rank (one collective, one host sync)."""
    local = flag.detach().reshape(-1).any() if isinstance(flag, torch.Tensor) else torch.tensor(bool(flag))
    return bool(_to_host(all_reduce(local.to(torch.int32), "max")).item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` outside a process group."""
    if not is_distributed() or dist.get_world_size() == 1:
        return [obj]
    device = training_device()
    if device.type == "cuda":  # the object collective stages its bytes on the current device
        torch.cuda.set_device(device)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if is_distributed():
        device = training_device()
        dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


def backend() -> str:
    """The process group's backend (``nccl`` on GPUs, ``gloo`` on CPU), ``none`` outside one."""
    return str(dist.get_backend()) if is_distributed() else "none"


def check_placement(module: nn.Module, device: torch.device | str, offloaded: bool = False) -> None:
    """Fail in one line unless ``device`` is this rank's training device, every parameter of
    ``module`` lives there (not checked when ZeRO offloads parameters to CPU/NVMe on purpose),
    and every tensor given to its first forward does too (checked once, by a pre-hook).

    A model or batch left on the CPU runs (slowly) on a GPU node, and a CPU tensor that reaches
    NCCL fails late: this says which one, at the first step.
    """
    device = torch.device(device)
    if device != training_device():
        raise PlacementError(f"the engine trains on {device} but this rank's device is {training_device()}")
    if not offloaded:
        stray = [n for n, p in module.named_parameters() if p.device != device]
        if stray:
            raise PlacementError(f"{len(stray)} parameters are not on {device} (first: {stray[0]})")

    def first_forward(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        handle.remove()
        given = [*args, *kwargs.values()]
        stray = [i for i, t in enumerate(given) if isinstance(t, torch.Tensor) and t.device != device]
        if stray:
            raise PlacementError(f"model input {stray[0]} is on {given[stray[0]].device}, not on {device}")

    handle = module.register_forward_pre_hook(first_forward, with_kwargs=True)


__all__ = ["PlacementError", "all_reduce", "backend", "check_placement", "any_rank", "barrier", "gather_objects", "host_syncs", "is_distributed", "mean_floats",
           "rank_world", "reduce_mean", "training_device"]
