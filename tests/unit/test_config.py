"""Typed configs: TOML + ``--set`` overrides, strict keys and types, round trips, secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from pipeline.core.config import ConfigError, config_hash, describe, flatten, help_field, load_config, to_dict, to_toml


@dataclass
class Inner:
    size: int = help_field(4, help="a size")
    ratio: float = help_field(0.5, help="a ratio")
    kind: Literal["tube", "random"] = help_field("tube", help="a choice")
    names: list[str] = help_field(["a"], help="a list")
    pair: tuple[float, float] = help_field((0.9, 0.95), help="a pair")
    path: str = help_field("", help="a string")
    secret_key: str = help_field("", help="never logged")
    flag: bool = help_field(False, help="a bool")
    maybe: int | None = help_field(None, help="optional")


@dataclass
class Job:
    inner: Inner = field(default_factory=Inner)
    other: Inner = field(default_factory=Inner)


def test_defaults_toml_then_cli(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[inner]\nsize = 8\nkind = "random"\n[other]\nnames = ["x", "y"]\n')
    cfg = load_config(Job, toml, ["inner.size=16", "other.pair=[0.8, 0.9]", "inner.flag=true", "inner.path=123"])
    assert cfg.inner.size == 16 and cfg.inner.kind == "random" and cfg.inner.flag is True
    assert cfg.other.names == ["x", "y"] and cfg.other.pair == (0.8, 0.9)
    assert cfg.inner.path == "123", "a string field keeps numeric-looking text as text"
    assert cfg.other.size == 4 and cfg.inner.ratio == 0.5


@pytest.mark.parametrize("override,message", [
    ("inner.sise=3", "unknown key 'inner.sise' in [inner]; valid keys: size, ratio, kind"),
    ("outer.size=3", "unknown key 'outer' in top level; valid keys: inner, other"),
    ("inner.size=big", "inner.size: expected int, got 'big'"),
    ("inner.size=1.5", "inner.size: expected int, got 1.5"),
    ("inner.kind=cube", "inner.kind: 'cube' is not valid; choose one of 'tube', 'random'"),
    ("inner.flag=maybe", "inner.flag: expected bool (true/false), got 'maybe'"),
    ("inner=3", "'inner' is a section; set one of its keys: size, ratio"),
    ("inner.size", "override 'inner.size' must look like section.key=value"),
])
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Job, None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_toml_keys_and_types(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[inner]\ncolour = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'inner.colour' in \\[inner\\]"):
        load_config(Job, toml)
    toml.write_text('[inner]\nratio = "half"\n')
    with pytest.raises(ConfigError, match="inner.ratio: expected float, got 'half'"):
        load_config(Job, toml)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Job, tmp_path / "missing.toml")


def test_optional_and_lists_from_cli() -> None:
    cfg = load_config(Job, None, ["inner.maybe=3", "other.names=p,q", "other.maybe=none"])
    assert cfg.inner.maybe == 3 and cfg.other.names == ["p", "q"] and cfg.other.maybe is None


def test_toml_round_trip_and_secrets(tmp_path: Path) -> None:
    cfg = load_config(Job, None, ["inner.size=9", "inner.secret_key=hunter2", 'inner.path="a b"'])
    text = to_toml(cfg)
    assert "hunter2" not in text and "***" in text
    (tmp_path / "saved.toml").write_text(text.replace('"***"', '""'))
    again = load_config(Job, tmp_path / "saved.toml")
    assert again.inner.size == 9 and again.inner.path == "a b" and again.inner.pair == (0.9, 0.95)
    assert to_dict(cfg)["inner"]["secret_key"] == "***"
    assert to_dict(cfg, redact=False)["inner"]["secret_key"] == "hunter2"
    assert flatten(to_dict(cfg))["inner.size"] == 9
    assert config_hash(cfg) == config_hash(load_config(Job, None, ["inner.size=9", "inner.secret_key=other",
                                                                   'inner.path="a b"']))
    assert config_hash(cfg) != config_hash(load_config(Job, None, ["inner.size=10"]))


def test_describe_lists_every_leaf_with_help() -> None:
    rows = {key: (tp, default, text) for key, tp, default, text in describe(Job)}
    assert rows["inner.kind"] == ("one of 'tube', 'random'", "tube", "a choice")
    assert len(rows) == 2 * 9 and all(text for _, _, text in rows.values())


def test_every_shipped_job_config_loads() -> None:
    """Every TOML under jobs/configs parses into its job's config (no stale keys)."""
    from jobs.dataset import DatasetJobConfig
    from jobs.plan import PlanConfig
    from jobs.shard import ShardJobConfig
    from pipeline.train.job_configs import DistillConfig, EvaluateConfig, ExtractConfig, FinetuneConfig, PretrainConfig
    from pipeline.workflow.pipeline_config import PipelineConfig

    classes = {"dataset": DatasetJobConfig, "plan": PlanConfig, "shard": ShardJobConfig, "pretrain": PretrainConfig,
               "finetune": FinetuneConfig, "distill": DistillConfig, "evaluate": EvaluateConfig, "extract": ExtractConfig,
               "pipeline": PipelineConfig}
    root = Path(__file__).resolve().parents[2] / "jobs" / "configs"
    files = sorted(root.rglob("*.toml"))
    assert files
    for path in files:
        load_config(classes[path.parent.name], path)


def test_a_job_can_give_a_section_its_own_defaults(tmp_path: Path) -> None:
    @dataclass
    class Custom:
        inner: Inner = field(default_factory=lambda: Inner(size=99, kind="random"))

    toml = tmp_path / "c.toml"
    toml.write_text("[inner]\nratio = 0.25\n")
    cfg = load_config(Custom, toml, ["inner.flag=true"])
    assert (cfg.inner.size, cfg.inner.kind, cfg.inner.ratio, cfg.inner.flag) == (99, "random", 0.25, True)
    assert load_config(Custom).inner.size == 99


def test_with_values_returns_a_checked_copy_and_leaves_the_original() -> None:
    from pipeline.core.config import with_values

    cfg = load_config(Job)
    changed = with_values(cfg, {"inner.size": "7", "other.kind": "random", "other.pair": [0.1, 0.2]})
    assert (changed.inner.size, changed.other.kind, changed.other.pair) == (7, "random", (0.1, 0.2))
    assert (cfg.inner.size, cfg.other.kind) == (4, "tube"), "the original is not mutated"
    with pytest.raises(ConfigError, match="unknown key 'inner.sise'"):
        with_values(cfg, {"inner.sise": 1})
    with pytest.raises(ConfigError, match="inner.size: expected int"):
        with_values(cfg, {"inner.size": "many"})
