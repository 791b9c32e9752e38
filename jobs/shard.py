"""Shard a video manifest into WebDataset tars with Ray tasks.

    python -m jobs.shard --config shard/default --set shard.manifest=M.csv --set shard.output=DIR|s3://...

Writes ``<output>/{split}-000000.tar ...``, ``<output>/index.json``, ``<output>/quarantine.jsonl`` and the
resolved config ``<output>/shard.toml``. Embedded Ray by default; the cluster when ``RAY_ADDRESS`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobs._cli import job_main
from pipeline.core import io as sio
from pipeline.core.config import help_field, to_toml
from pipeline.orchestration.ray_train import ray_session
from pipeline.orchestration.sharding import ShardSection, format_report, prepare, shard


@dataclass
class RaySection:
    address: str = help_field("", help="Ray cluster address ('' = RAY_ADDRESS or an embedded Ray)")
    num_cpus: int = help_field(0, help="CPUs of the embedded Ray (0 = all of this machine)")


@dataclass
class ShardJobConfig:
    """Shard a video manifest into WebDataset tars."""

    shard: ShardSection = field(default_factory=ShardSection)
    ray: RaySection = field(default_factory=RaySection)


def run(cfg: ShardJobConfig) -> int:
    prepared = prepare(cfg.shard)  # fails fast, before Ray starts, on a bad manifest, setting or output
    try:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus or None):
            index, report = shard(cfg.shard, prepared)
    finally:
        prepared.close()
    sio.write_text(sio.join(cfg.shard.output, "shard.toml"), to_toml(cfg))
    print(format_report(report, cfg.shard.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(ShardJobConfig, run, prog="jobs.shard", default_config="shard/default"))
