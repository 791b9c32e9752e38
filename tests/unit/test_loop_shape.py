"""One per-rank loop shape: ``loop(cfg, session)`` for every loop, shared parts in ``pipeline.train.loop``
(never imported from a sibling loop), and a driver that resolves a new config instead of mutating it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pipeline.train.session import LocalSession

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "pipeline" / "train"
LOOPS = ("pretrain", "finetune", "distill", "evaluate", "extract")


def _loop_functions() -> dict[str, object]:
    from pipeline.train.distill import distill
    from pipeline.train.evaluate import evaluate
    from pipeline.train.extract import extract
    from pipeline.train.finetune import finetune
    from pipeline.train.pretrain import pretrain

    return {"pretrain": pretrain, "finetune": finetune, "distill": distill, "evaluate": evaluate, "extract": extract}


@pytest.mark.parametrize("name", LOOPS)
def test_every_loop_is_called_with_cfg_and_session(name: str) -> None:
    params = inspect.signature(_loop_functions()[name]).parameters
    assert list(params) == ["cfg", "session"], f"{name}{inspect.signature(_loop_functions()[name])}"
    assert all(p.default is inspect.Parameter.empty for p in params.values())


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):  # function-level imports too
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "pipeline.train":  # from pipeline.train import pretrain
                names |= {f"pipeline.train.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("path", sorted(TRAIN.glob("*.py")), ids=lambda p: p.stem)
def test_no_train_module_imports_a_sibling_loop(path: Path) -> None:
    siblings = {f"pipeline.train.{name}" for name in LOOPS} - {f"pipeline.train.{path.stem}"}
    found = _imported_modules(ast.parse(path.read_text())) & siblings
    assert not found, f"pipeline/train/{path.name} imports {sorted(found)}: shared parts go in pipeline.train.loop"


def test_local_session_has_a_world_size(tmp_path: Path) -> None:
    assert LocalSession(tmp_path).world_size == 1
    session = LocalSession(tmp_path, rank=1, local_rank=1, world_size=2)
    assert (session.rank, session.local_rank, session.world_size) == (1, 1, 2)


def test_the_driver_returns_a_new_config_and_leaves_the_given_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core.config import load_config
    from pipeline.orchestration.driver import resolve_on_driver
    from pipeline.train.job_configs import ExtractConfig

    monkeypatch.chdir(tmp_path)
    cfg = load_config(ExtractConfig, ROOT / "jobs/configs/extract/demo.toml",
                      ["data.shards=shards", "run.output=out", "model.init=", "tracking.enabled=false"])
    resolved = resolve_on_driver(cfg, model_folders=True)
    assert resolved is not cfg
    assert (resolved.data.shards, resolved.run.output) == (str(tmp_path / "shards"), str(tmp_path / "out"))
    assert (cfg.data.shards, cfg.run.output) == ("shards", "out")  # not mutated
    assert resolved.model.init == "" and resolved.tracking == cfg.tracking
    remote = load_config(ExtractConfig, ROOT / "jobs/configs/extract/demo.toml",
                         ["data.shards=s3://bucket/shards", "model.init=", "tracking.enabled=false"])
    assert resolve_on_driver(remote).data.shards == "s3://bucket/shards"
