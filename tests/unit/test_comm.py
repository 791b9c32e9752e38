"""Collectives go through :mod:`pipeline.train.comm` and run on the training device; worker threads.

NCCL (the GPU backend) serves CUDA tensors only, so a collective on a CPU tensor, harmless under
gloo in every CPU test, fails at its first call on a GPU cluster. These tests stand for that case
without a GPU: one reads the source (no module but ``comm`` calls a collective), the other makes
the training device one the caller's tensors never live on (``meta``) and checks, on a spy in
place of the collective, that every tensor reached it on that device.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from pipeline.train import comm

REPO = Path(__file__).resolve().parents[2]
COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather",
               "gather_object", "scatter", "scatter_object_list", "all_to_all", "all_to_all_single"}


def _collective_calls(path: Path) -> list[str]:
    """Calls of a ``torch.distributed`` collective in a file: through the module (``dist.all_reduce``,
    ``torch.distributed.broadcast``, any alias) or a name imported from it."""
    tree = ast.parse(path.read_text())
    aliases, names = {"dist"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch.distributed":
            names |= {a.asname or a.name for a in node.names if a.name in COLLECTIVES}
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        through_module = (isinstance(fn, ast.Attribute) and fn.attr in COLLECTIVES
                          and ((isinstance(fn.value, ast.Name) and fn.value.id in aliases)
                               or (isinstance(fn.value, ast.Attribute) and fn.value.attr == "distributed")))
        if through_module or (isinstance(fn, ast.Name) and fn.id in names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(fn)}")
    return found


def test_no_module_but_comm_calls_a_collective() -> None:
    comm_file = REPO / "pipeline/train/comm.py"
    calls = [c for p in sorted((REPO / "pipeline").rglob("*.py")) if p != comm_file for c in _collective_calls(p)]
    assert not calls, f"collectives outside pipeline/train/comm.py (NCCL needs them on the training device): {calls}"
    assert _collective_calls(comm_file), "the checker found no collective in comm itself"


@pytest.fixture
def meta_group(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, torch.device]]:
    """A 2-rank 'group' whose training device is ``meta``; collectives record their tensor's device."""
    seen: list[tuple[str, torch.device]] = []
    monkeypatch.setattr(comm, "training_device", lambda: torch.device("meta"))
    monkeypatch.setattr(comm, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: 0)
    monkeypatch.setattr(dist, "all_reduce", lambda t, *a, **k: seen.append(("all_reduce", t.device)))
    # a meta tensor has no values to read back: the host copy is a zero of the same shape
    monkeypatch.setattr(comm, "_to_host", lambda t: torch.zeros(t.shape, dtype=t.dtype))
    return seen


@pytest.mark.parametrize("source", ["cpu", "float64", "int"])
def test_every_collective_runs_on_the_training_device(meta_group: list, source: str) -> None:
    value = {"cpu": torch.tensor(1.5), "float64": torch.tensor(2.0, dtype=torch.float64),
             "int": torch.tensor(3)}[source]
    assert comm.reduce_mean(value).device.type == "meta"
    assert comm.all_reduce(value, "max").device.type == "meta"
    comm.mean_floats({"loss": value, "acc": torch.tensor(0.5)})
    comm.any_rank(True)
    comm.any_rank(torch.tensor([False, True]))
    assert [d.type for _, d in meta_group] == ["meta"] * 5, meta_group


def test_collective_results_read_on_the_host_are_counted() -> None:
    before = comm.host_syncs()
    comm.reduce_mean(torch.tensor(1.0))  # stays on the device: no sync
    comm.mean_floats({"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)})  # one for all three
    comm.any_rank(False)
    assert comm.host_syncs() - before == 2


def test_outside_a_process_group_the_values_come_back() -> None:
    assert comm.rank_world() == (0, 1)
    assert comm.mean_floats({"loss": torch.tensor(2.5)}) == {"loss": 2.5}
    assert comm.any_rank(True) and not comm.any_rank(torch.tensor([0.0]))
    assert comm.gather_objects({"a": 1}) == [{"a": 1}]


# ---- threads and the reconstruction picture ----------------------------------------------------


def test_training_process_leaves_the_loader_workers_their_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.orchestration import ray_train as orchestration

    monkeypatch.setattr(orchestration, "RayTrainSession", lambda **kw: None)
    monkeypatch.setattr(orchestration, "mark_worker_logs", lambda: None)  # a worker's logging, not this process's
    threads: dict[str, int] = {}
    before = torch.get_num_threads()

    def run(cpus: int, loaders: int, explicit: int = 0) -> int:
        cfg = SimpleNamespace(scaling=SimpleNamespace(cpus_per_worker=cpus, torch_threads=explicit),
                              data=SimpleNamespace(num_workers=loaders),
                              run=SimpleNamespace(output="runs", name="t"))
        orchestration._train_worker({"cfg": cfg, "loop": lambda c, s: threads.update(n=torch.get_num_threads()),
                                     "loader_workers": cfg.data.num_workers})
        return threads["n"]

    try:
        assert run(cpus=6, loaders=2) == 4
        assert run(cpus=2, loaders=4) == 1  # never below one
        assert run(cpus=6, loaders=2, explicit=3) == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(("stage", "rank", "due"), [(2, 0, True), (2, 1, False), (1, 1, False), (0, 1, False),
                                                    (3, 1, True)])
def test_reconstruction_picture_on_rank0_unless_zero3(stage: int, rank: int, due: bool) -> None:
    from pipeline.train.job_configs import PretrainConfig
    from pipeline.train.pretrain import picture_due

    cfg = PretrainConfig()
    cfg.deepspeed.zero_stage, cfg.train.image_every = stage, 5
    assert picture_due(cfg, 10, rank) is due
    assert picture_due(cfg, 11, 0) is False


def test_placement_check_names_a_parameter_or_input_off_the_training_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``make gpu-smoke`` relies on: a model or batch left on the CPU of a GPU node fails at
    the first step in one line. Here the rank's device is made ``meta`` (a device the CPU tensors
    of this test are not on), standing for ``cuda:LOCAL_RANK``."""
    model = torch.nn.Linear(3, 2)
    comm.check_placement(model, "cpu")  # everything on the CPU rank's device
    model(torch.zeros(1, 3))
    comm.check_placement(model, "cpu")
    with pytest.raises(comm.PlacementError, match="model input 0 is on meta"):
        model(torch.zeros(1, 3, device="meta"))
    model(torch.zeros(1, 3))  # the hook is gone after the first forward

    monkeypatch.setattr(comm, "training_device", lambda: torch.device("meta"))
    with pytest.raises(comm.PlacementError, match="engine trains on cpu but this rank's device is meta"):
        comm.check_placement(model, "cpu")
    with pytest.raises(comm.PlacementError, match="2 parameters are not on meta"):
        comm.check_placement(model, "meta")
    comm.check_placement(model, "meta", offloaded=True)  # ZeRO parameter offload: on the CPU on purpose
    with pytest.raises(comm.PlacementError, match="model input 0 is on cpu, not on meta"):
        model(torch.zeros(1, 3))
