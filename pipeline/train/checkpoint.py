"""What a pre-training checkpoint holds, and how a run comes back from one.

A checkpoint directory (staged per rank, merged by Ray Train into its storage)::

    ds/<tag>/...           DeepSpeed: every rank's ZeRO shard + the model states
    ds/latest              DeepSpeed's pointer to <tag>
    loop.json              step, epoch, data position, world size, MLflow run id (rank 0)
    rng/rank<r>.pt         torch / numpy / python RNG states of rank r
    files/rank<r>.json     every file rank r wrote, with its size, written last

Ray Train copies each rank's files into storage one by one, in no fixed order and not
atomically, so a kill mid-copy leaves a folder with some files missing or cut short. A
checkpoint counts as complete only when every rank's file list is there and every listed file
has its listed size (:func:`is_complete`); anything else is skipped on resume, never half-read.

Everything needed to continue exactly is here: the lr is a function of the step, the data
position is the loader's state, and augmentation/masks are seeded per sample.
"""

from __future__ import annotations

import json
import logging
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.core import io as sio
from pipeline.core.errors import StorageError
from pipeline.infra import engine as eng

log = logging.getLogger(__name__)

LOOP_FILE = "loop.json"
FILES_DIR = "files"  # per-rank lists of {relative path: bytes}


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def save(engine: Any, directory: Path, step: int, loop_state: dict[str, Any], rank: int) -> None:
    """Every rank writes its part of the checkpoint of ``step`` into ``directory`` (collective)."""
    directory.mkdir(parents=True, exist_ok=True)
    eng.save_checkpoint(engine, directory / "ds", tag_of(step), {"step": step})
    rng_dir = directory / "rng"
    rng_dir.mkdir(exist_ok=True)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               rng_dir / f"rank{rank}.pt")
    if rank == 0:
        loop = {**loop_state, "step": step, "tag": tag_of(step), "files": FILES_DIR}
        (directory / LOOP_FILE).write_text(json.dumps(loop, indent=1))
    if dist.is_initialized():
        dist.barrier()  # ranks sharing one staging folder (LocalSession) list each other's whole files
    _write_file_list(directory, rank)


def _write_file_list(directory: Path, rank: int) -> None:
    """``files/rank<r>.json``: every file now in ``directory`` with its size (the commit record)."""
    files = {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*"))
             if p.is_file() and p.relative_to(directory).parts[0] != FILES_DIR}
    target = directory / FILES_DIR / f"rank{rank}.json"
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(files, indent=0, sort_keys=True))
    tmp.replace(target)


@dataclass
class Restore:
    """A checkpoint to continue from, as this world size can load it."""

    loop: dict[str, Any]
    ds_dir: Path
    tag: str
    universal: bool
    rng_file: Path | None


def prepare_restore(directory: str | None, rank: int, world_size: int, local_rank: int) -> Restore | None:
    """Read ``loop.json``; if the checkpoint was saved by another number of ranks, convert it to
    DeepSpeed's universal format (once per node) so this world size can load it."""
    if directory is None:
        return None
    root = Path(directory)
    loop = json.loads((root / LOOP_FILE).read_text())
    tag, saved_world = loop["tag"], int(loop["world_size"])
    rng = root / "rng" / f"rank{rank}.pt"
    if saved_world == world_size:
        return Restore(loop, root / "ds", tag, False, rng if rng.is_file() else None)
    # Other ranks count: the ZeRO partitions must be re-cut. One converter per node, then everyone loads.
    target = Path(tempfile.gettempdir()) / f"tubelet-universal-{loop.get('run_id') or 'run'}-{tag}"
    if local_rank == 0 and not (target / tag).is_dir():
        log.info("checkpoint %s was saved by %d ranks; converting to universal for %d", tag, saved_world, world_size)
        eng.to_universal(root / "ds", tag, target)
    if dist.is_initialized():
        dist.barrier()
    return Restore(loop, target, tag, True, None)


def restore_rng(path: Path | None) -> None:
    if path is None:
        return  # a different world size: ranks have new identities, their RNG streams start fresh
    state = torch.load(path, weights_only=False)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# Files that belong to one rank (the number): DeepSpeed's ZeRO shards, plain or bf16 (optimizer
# states, and ZeRO-3's model-state partitions), our RNG states and file lists.
_RANK_FILE = re.compile(r"(?:^|/)(?:bf16_)?zero_pp_rank_(\d+)_|^rng/rank(\d+)\.pt$|^files/rank(\d+)\.json$")


def files_for_rank(names: list[str], rank: int, same_world: bool, local_rank: int) -> list[str]:
    """Which files of a checkpoint (relative names) one rank must fetch to resume.

    Same world size: the shared files plus this rank's own. DeepSpeed 0.19.8 (``engine.py``,
    with ``zero_optimization.elastic_checkpoint`` false, its default and ours) opens, on rank r:
    ``ds/latest`` only without a tag (we pass one); ``<tag>/mp_rank_00_model_states.pt`` for
    ZeRO 0-2 (``_get_all_ckpt_names``: module weights, lr scheduler, step; under ZeRO-0 also the
    optimizer), or ``<tag>/zero_pp_rank_r_mp_rank_00_model_states.pt`` for ZeRO-3; and
    ``<tag>/[bf16_]zero_pp_rank_r_mp_rank_00_optim_states.pt`` for ZeRO 1-3
    (``_get_all_zero_checkpoint_state_dicts`` builds every rank's name but loads only index r;
    the others are never opened, nor checked for existence). Anything not known to be another
    rank's is fetched. A new world size needs every shard for the universal conversion, which
    runs once per node: local rank 0 fetches everything, the others only ``loop.json``.
    """
    if not same_world:
        return list(names) if local_rank == 0 else [n for n in names if n == LOOP_FILE]
    chosen = []
    for name in names:
        match = _RANK_FILE.search(name)
        owner = next((int(g) for g in match.groups() if g is not None), None) if match else None
        if owner is None or owner == rank:
            chosen.append(name)
    return chosen


def fetch_for_rank(uri: str, target: Path, rank: int, world_size: int, local_rank: int) -> dict[str, Any]:
    """Download what rank ``rank`` needs of the remote checkpoint ``uri`` into ``target`` (see
    :func:`files_for_rank`); returns and logs what it fetched: names, file and byte counts."""
    fs, root = sio.filesystem(uri)
    root = root.rstrip("/")
    listing = sio.retrying(f"list {uri}", lambda: fs.find(root, detail=True))
    sizes = {path[len(root) + 1:]: int(info.get("size") or 0) for path, info in listing.items()
             if info.get("type", "file") == "file" and not path.endswith("/")}  # not folder markers
    loop = json.loads(sio.read_text(sio.join(uri, LOOP_FILE)))
    names = sorted(files_for_rank(sorted(sizes), rank, int(loop["world_size"]) == world_size, local_rank))
    local = [str(target / name) for name in names]
    for path in local:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    sio.retrying(f"download {uri} (rank {rank})", lambda: fs.get([f"{root}/{n}" for n in names], local))
    record = {"rank": rank, "files": len(names), "of_files": len(sizes), "bytes": sum(sizes[n] for n in names),
              "of_bytes": sum(sizes.values()), "names": names}
    log.info("rank %d restore fetched %d of %d files, %d of %d bytes: %s", rank, record["files"],
             record["of_files"], record["bytes"], record["of_bytes"], json.dumps(names))
    return record


def is_complete(uri: str) -> bool:
    """Did every rank finish writing this checkpoint? (A kill mid-upload leaves a partial folder.)"""
    loop_uri = sio.join(uri, LOOP_FILE)
    try:
        loop = json.loads(sio.read_text(loop_uri))
        world = int(loop["world_size"])
    except (StorageError, ValueError, KeyError, TypeError):
        return False  # missing, or cut short mid-copy
    if not loop.get("files"):  # written before file lists existed: the old, weaker check
        needed = [sio.join(uri, "ds", "latest")] + [sio.join(uri, "rng", f"rank{r}.pt") for r in range(world)]
        return all(sio.exists(u) for u in needed)
    for rank in range(world):
        try:
            files = json.loads(sio.read_text(sio.join(uri, loop["files"], f"rank{rank}.json")))
            if any(sio.size(sio.join(uri, name)) != size for name, size in files.items()):
                return False
        except (StorageError, ValueError, AttributeError):
            return False
    return True


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint folder of a run (local or s3://), by step."""
    best: tuple[int, str] | None = None
    for uri in sio.listdir(run_dir):
        # Ray Train names checkpoint folders checkpoint_<timestamp> (beside checkpoint_manager_snapshot.json).
        if not re.match(r"checkpoint_\d", uri.rstrip("/").rsplit("/", 1)[-1]) or not is_complete(uri):
            continue
        step = int(json.loads(sio.read_text(sio.join(uri, LOOP_FILE)))["step"])
        if best is None or step > best[0]:
            best = (step, uri)
    return best[1] if best else None
