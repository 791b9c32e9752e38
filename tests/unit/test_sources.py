"""Pre-training on several shard sets (``data.sources``, VideoMAE V2's UnlabeledHybrid): the mix
follows the weights (by default each source's sample count), an epoch is the sources' samples
together, resume stays exact, per-source counts add up and reach MLflow's metrics, and the keys
are checked in one line (evaluation refuses them; fine-tuning takes them without validation).

Tiny shards written in the test (64x48 videos, 4-frame 32x32 clips), as in test_loader.py.
"""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest
import torch

from pipeline.core.config import ConfigError, load_config
from pipeline.core.errors import DataError
from pipeline.data.loader import EvalDataConfig, EvalLoader, TrainDataConfig, pretrain_loader, source_names
from pipeline.data.masking import MaskConfig, token_grid
from pipeline.data.shard_index import RawSample
from pipeline.data.streams import PassEnd, mix_sources
from pipeline.train.job_configs import EvaluateConfig, FinetuneConfig, PretrainConfig
from tests.unit.shard_fixtures import make_shards, sample, write_tar

GRID = token_grid(4, 32, 16, 2)


def config(*sources: Path, **kw: object) -> TrainDataConfig:
    base = dict(sources=tuple(str(s) for s in sources), num_frames=4, sampling_rate=2, input_size=32, repeated_aug=1,
                batch_size=4, num_workers=0, shuffle_buffer=4, error_check_after=10)
    base.update(kw)
    return TrainDataConfig(**base)  # type: ignore[arg-type]


def source_of(key: str) -> str:
    return "big" if key.startswith("a") else "small"


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for name in ("video", "enc_mask", "dec_mask", "label", "frame_indices"):
            assert torch.equal(x[name], y[name]), name


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> tuple[Path, Path]:
    """Source "big": 4 shards x 12 samples (keys a*); source "small": 2 shards x 8 (keys b*)."""
    root = tmp_path_factory.mktemp("sources")
    make_shards(root / "big", [12] * 4, prefix="a")
    make_shards(root / "small", [8] * 2, prefix="b")
    return root / "big", root / "small"


# ------------------------------------------------------------------------------------------ the mix


def test_mix_sources_follows_the_weights_and_passes_events_through():
    def stream(s: int):
        for p in range(10**6):
            for i in range(3):
                yield RawSample(key=f"{s}-{p}-{i}", members={}, shard="x", source=s)
            yield PassEnd(p, s)

    items = list(zip(range(20000), mix_sources([stream(0), None, stream(2)], [1.0, 5.0, 3.0], random.Random(0))))
    samples = [it for _, it in items if isinstance(it, RawSample)]
    share = sum(s.source == 2 for s in samples) / len(samples)
    assert abs(share - 0.75) < 0.02  # 3 : 1; the source with no units (None) is never drawn
    ends = [it for _, it in items if isinstance(it, PassEnd)]
    assert {e.source for e in ends} == {0, 2} and len(ends) > 1000


def test_epoch_mix_follows_source_weights(two):
    big, small = two
    loader = pretrain_loader(config(big, small, source_weights=(1.0, 3.0)), MaskConfig(), GRID)
    assert loader.num_samples == 64 and len(loader) == 16  # an epoch = 48 + 16 samples
    keys = [k for b in loader for k in b["keys"]]
    counts = collections.Counter(source_of(k) for k in keys)
    assert len(keys) == 64 and abs(counts["small"] - 48) <= 10, counts  # 3/4 of the slots: small is oversampled


def test_default_mix_is_proportional_to_sample_counts(two):
    big, small = two
    loader = pretrain_loader(config(big, small, num_workers=1), MaskConfig(), GRID)
    assert loader.source_weights == (48.0, 16.0)
    keys = [k for b in loader for k in b["keys"]]
    counts = collections.Counter(source_of(k) for k in keys)
    assert abs(counts["big"] - 48) <= 8 and abs(counts["small"] - 16) <= 8, counts


def test_per_source_counts_add_up_and_are_logged(two):
    from pipeline.train.loop import data_metrics

    big, small = two
    loader = pretrain_loader(config(big, small, repeated_aug=2), MaskConfig(), GRID)
    assert loader.source_names == ("big", "small")
    batches = [b for _, b in zip(range(20), loader.forever())]  # across the epoch boundary (16 steps)
    for b in batches:  # each batch's counts since the previous one add up too
        assert sum(b["stats"].get("by_source", {}).values()) == b["stats"]["samples_ok"]
    stats = loader.stats
    assert sum(stats.by_source.values()) == stats.samples_ok == 40  # 20 batches x 4 views / 2 views
    seen = collections.Counter(source_of(k) for b in batches for k in b["keys"][::2])
    assert stats.by_source == dict(seen)
    metrics = data_metrics(loader)
    assert metrics["data/source/big_samples"] == seen["big"] and metrics["data/source/small_samples"] == seen["small"]
    assert metrics["data_samples_ok"] == 40


def test_source_names_are_short_unique_and_mlflow_safe():
    assert source_names(("/d/k400/", "s3://b/ssv2", "/e/k400", "/f/a b:c")) == ("k400", "ssv2", "k400_2", "a_b_c")


def test_a_single_shard_set_is_unchanged(two):
    """Without data.sources the stream, the batches and the stats are those of before (no by_source)."""
    big, _ = two
    loader = pretrain_loader(config(shards=str(big)), MaskConfig(), GRID)
    batch = next(iter(loader))
    assert loader.source_names == () and "by_source" not in batch["stats"] and not loader.stats.by_source
    assert "sources" not in loader.state_dict()


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("workers,world_size,rank", [(0, 1, 0), (1, 1, 0), (1, 2, 1)])
def test_resume_with_sources_yields_the_same_next_batches(tmp_path, workers, world_size, rank):
    make_shards(tmp_path / "one", [4, 3, 5], prefix="a")
    keys = make_shards(tmp_path / "two", [3, 4], prefix="b")
    # an undecodable video in source two: positions count failed samples, errors are not re-counted
    write_tar(tmp_path / "two" / "train-000000.tar", [sample("bbad", 0) | {"mp4": b"\x00garbage" * 50}] +
              [sample(k, i) for i, k in enumerate(keys[1:3])])
    cfg = config(tmp_path / "one", tmp_path / "two", num_workers=workers, batch_size=2, repeated_aug=3,
                 source_weights=(1.0, 2.0), max_decode_error_fraction=0.5)

    def loader():
        return pretrain_loader(cfg, MaskConfig(), GRID, rank=rank, world_size=world_size)

    full = loader()
    steps = len(full)
    reference, stats = [], []
    for batch in full.forever():
        reference.append(batch)
        stats.append(full.stats.to_dict())
        if len(reference) == 2 * steps:
            break
    assert stats[-1]["by_source"] and stats[-1]["decode_errors"] > 0
    for stop in (1, steps // 2 + 1, steps, steps + 3):
        first = loader()
        done = [b for _, b in zip(range(stop), first.forever())]
        state = json.loads(json.dumps(first.state_dict()))  # plain JSON, as a checkpoint holds it
        resumed = loader()
        resumed.load_state_dict(state)
        rest = [b for _, b in zip(range(2 * steps - stop), resumed.forever())]
        assert_same_batches(done + rest, reference)
        assert resumed.stats.to_dict() == stats[-1]  # per-source counts too: nothing re-counted, nothing missed


def test_resume_after_the_weights_changed_carries_clips(two, caplog):
    big, small = two
    first = pretrain_loader(config(big, small), MaskConfig(), GRID)
    _ = [b for _, b in zip(range(5), first)]
    other = pretrain_loader(config(big, small, source_weights=(1.0, 1.0)), MaskConfig(), GRID)
    other.load_state_dict(first.state_dict())
    assert other.step == 5 and other._positions == {}  # by clips consumed, not the other mix's positions
    assert "data.sources / data.source_weights changed" in caplog.text


# ------------------------------------------------------------------------------------------ errors


def test_a_source_whose_every_sample_fails_stops_the_run(tmp_path, two):
    big, _ = two
    (tmp_path / "bad").mkdir()
    write_tar(tmp_path / "bad" / "train-000000.tar", [sample(f"bk{i}", i) | {"mp4": b"junk"} for i in range(3)])
    (tmp_path / "bad" / "index.json").write_text(json.dumps(
        {"shards": [{"name": "train-000000.tar", "split": "train", "samples": 3}], "labels": []}))
    # drawn half the time: its pass ends within the epoch, and the per-source pass check stops the run
    # (the global guards do not: the other source's samples are fine, and the fraction bound is off)
    cfg = config(big, tmp_path / "bad", source_weights=(1.0, 1.0), error_check_after=10**6, max_decode_error_fraction=1.0)
    with pytest.raises(DataError, match=r"no sample of shards train-000000.tar could be used"):
        _ = [b for _, b in zip(range(40), pretrain_loader(cfg, MaskConfig(), GRID).forever())]
    # drawn rarely (3 of 51 samples): no pass ends in an epoch; the source's own "every sample failed" guard
    cfg = config(big, tmp_path / "bad", error_check_after=2, max_decode_error_fraction=1.0)
    with pytest.raises(DataError, match=r"^every sample of data.sources source 'bad' failed \(2\)"):
        _ = [b for _, b in zip(range(100), pretrain_loader(cfg, MaskConfig(), GRID).forever())]


@pytest.mark.parametrize("sets,pattern", [
    (["data.sources=/a,/b", "data.source_weights=[1.0]"], r"data\.source_weights has 1 weights for 2 data\.sources"),
    (["data.sources=/a,/b", "data.source_weights=1,0"], r"data\.source_weights must all be > 0"),
    (["data.sources=/a,/b", "data.source_weights=1,nan"], r"data\.source_weights must all be > 0"),
    (["data.sources=/a,/a"], r"data\.sources lists '/a' more than once"),
])
def test_source_config_errors_are_one_line_naming_the_key(sets, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_config(PretrainConfig, None, sets)
    assert "\n" not in str(err.value)


def test_evaluation_refuses_sources_and_fine_tuning_validation_with_them(two):
    """Fine-tuning takes several labelled sources (tests/unit/test_hybrid.py), but not with validation:
    validation reads one shard set in its own label space."""
    from pipeline.train.supervised import check_config

    big, small = two
    with pytest.raises(ConfigError, match=r"finetune\.val_split='val' with data\.sources: .* set finetune\.val_split=''"):
        check_config(load_config(FinetuneConfig, None, [f"data.sources={big},{small}", "model.init=random"]))
    check_config(load_config(FinetuneConfig, None, [f"data.sources={big},{small}", "model.init=random",
                                                    "finetune.val_split="]))
    with pytest.raises(ConfigError, match=r"data\.sources"):  # not a key of evaluation's [data]
        load_config(EvaluateConfig, None, [f"data.sources={big}"])
    cfg = config(big, small)  # a config that carries sources, handed to the evaluation loader
    with pytest.raises(DataError, match=r"data\.sources is for pre-training only: evaluation"):
        EvalLoader(cfg)  # type: ignore[arg-type]
    assert EvalDataConfig(shards=str(big))  # a plain evaluation config is unaffected


def test_driver_checks_every_source_before_ray(tmp_path, two):
    from jobs import pretrain as pretrain_job

    big, small = two
    sets = [f"run.output={tmp_path / 'runs'}", "tracking.enabled=false", "model.name=vit_tiny",
            "data.batch_size=2", "scaling.num_workers=1"]
    ok = pretrain_job.prepare(load_config(PretrainConfig, None, [*sets, f"data.sources={big},{small}"]))
    assert ok.data.sources == (str(big), str(small)) and ok.data.shards == ""
    with pytest.raises(DataError, match=r"^data\.sources\[1\]='.*nothing': no shard index at") as err:
        pretrain_job.prepare(load_config(PretrainConfig, None, [*sets, f"data.sources={big},{tmp_path / 'nothing'}"]))
    assert "\n" not in str(err.value)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "index.json").write_text(json.dumps(
        {"shards": [{"name": "val-000000.tar", "split": "val", "samples": 3}], "labels": []}))
    with pytest.raises(DataError, match=r"^data\.sources\[1\]='.*val': data\.split='train': .* has no 'train' split"):
        pretrain_job.prepare(load_config(PretrainConfig, None, [*sets, f"data.sources={big},{tmp_path / 'val'}"]))
    with pytest.raises(DataError, match=r"clips per step, but split 'train' of data\.sources \(2 sources\) has 64"):
        pretrain_job.prepare(load_config(PretrainConfig, None, [*sets, f"data.sources={big},{small}",
                                                                "data.batch_size=65", "data.repeated_aug=1"]))
