"""The import rules of docs/ARCHITECTURE.md: layers import only from the layers above them, and
DeepSpeed, Ray, MLflow and the torch.distributed collectives each live in their named modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"

# Layer of a pipeline module (dotted name without "pipeline."); a module's prefix decides.
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("video",),
    ("models",),
    ("data",),
    ("infra",),
    ("train",),
    ("orchestration",),
    ("workflow", "submission"),
]
ALLOWED = {  # third-party package -> the pipeline modules that may import it
    "deepspeed": {"infra.engine"},
    "mlflow": {"infra.tracking"},
    "ray": {"orchestration.ray_train", "orchestration.sharding", "orchestration.shard_tasks", "submission.client"},
}


def _layer(module: str) -> int:
    head = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"pipeline.{module} is in no layer of docs/ARCHITECTURE.md: add it there and here")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PIPELINE.rglob("*.py")):
        name = ".".join(path.relative_to(PIPELINE).with_suffix("").parts).removesuffix(".__init__")
        if name != "__init__":
            out[name] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_layer_imports_only_from_the_layers_above(module: str) -> None:
    mine = _layer(module)
    for name in _imports(MODULES[module]):
        if not name.startswith("pipeline."):
            continue
        target = name.removeprefix("pipeline.")
        if target.split(".")[0] not in {n for layer in LAYERS for n in layer}:
            continue  # a name imported from a package's __init__ (pipeline.models.create_model)
        assert _layer(target) <= mine, f"pipeline.{module} (layer {mine}) imports {name} (layer {_layer(target)})"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_heavy_frameworks_live_in_their_modules(package: str) -> None:
    users = {m for m, tree in MODULES.items() if any(n == package or n.startswith(package + ".") for n in _imports(tree))}
    assert users <= ALLOWED[package], f"{package} imported by {sorted(users - ALLOWED[package])}"


def test_models_know_nothing_of_distribution() -> None:
    for module, tree in MODULES.items():
        if module.startswith("models"):
            bad = {n for n in _imports(tree) if n.split(".")[0] in ("deepspeed", "ray", "mlflow")
                   or n.startswith("torch.distributed")}
            assert not bad, f"pipeline.{module} imports {bad}"


def test_only_preflight_reaches_into_jobs() -> None:
    users = {m for m, tree in MODULES.items() if any(n == "jobs" or n.startswith("jobs.") for n in _imports(tree))}
    assert users <= {"submission.preflight"}, sorted(users)
