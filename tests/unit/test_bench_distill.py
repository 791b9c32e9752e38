"""The distillation benchmark's bookkeeping: the same budget for both arms, the means and the ratio
it records, and its figure in benchmarks.common's format. Plumbing only; the effect is what
``python -m benchmarks.bench_distill`` measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_distill as bench


def test_defaults_a_larger_teacher_and_budgets_on_the_val_grid(capsys: pytest.CaptureFixture[str]) -> None:
    a = bench._args([])
    assert (a.model, a.teacher_model, a.seeds) == ("vit_tiny", "vit_tiny_big", [0, 1, 2])
    assert a.pretrain_steps > 0 and a.unlabelled_per_class > 0, "V2's order: both sizes pre-trained, then fine-tuned"
    assert a.finetune_steps % a.val_every == 0 and a.teacher_steps % a.val_every == 0
    with pytest.raises(SystemExit):
        bench._args(["--finetune-steps", "100", "--val-every", "30"])
    quick = bench._args(["--quick"])
    assert quick.tag == "quick" and quick.seeds == [0] and quick.finetune_steps == 4


class _Stop(Exception):
    pass


def test_feature_weight_reaches_the_distill_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs import distill as job

    seen = []

    def run(cfg):  # noqa: ANN001, ANN202 - jobs.distill.run, stopped before Ray
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(job, "run", run)
    assert bench._args([]).feature_weight == 0.0, "off by default: the recorded results are logits-only"
    for argv, weight in (([], 0.0), (["--feature-weight", "0.5"], 0.5)):
        with pytest.raises(_Stop):
            bench.distill(bench._args(argv), tmp_path, tmp_path / "shards", "d", str(tmp_path / "teacher"), "random", 0)
        assert seen[-1].distill.feature_weight == weight


def _seed(seed: int, direct: tuple[float, float], distilled: tuple[float, float]) -> dict:
    arm = lambda v, t: {"val": {"top1": v}, "test": {"top1": t}}  # noqa: E731
    return {"seed": seed, "results": {"direct": arm(*direct), "distilled": arm(*distilled)}}


def test_summary_means_over_seeds_and_ratio_of_test_top1(tmp_path: Path) -> None:
    seeds = [_seed(0, (0.5, 0.4), (0.75, 0.6)), _seed(1, (0.25, 0.4), (0.5, 0.5))]
    s = bench.summary(seeds)
    assert s["mean_val_top1_direct"] == pytest.approx(0.375) and s["mean_val_top1_distilled"] == pytest.approx(0.625)
    assert s["mean_test_top1_direct"] == pytest.approx(0.4) and s["mean_test_top1_distilled"] == pytest.approx(0.55)
    assert s["ratio_test_top1"] == pytest.approx(0.55 / 0.4)
    entry = {"tag": "t", "when": "now", "command": "python -m benchmarks.bench_distill", "wall_s": 1.0, "summary": s,
             "settings": {"model": "vit_tiny", "seeds": [0, 1]}, "seeds": seeds, "teacher": {"model": "vit_s", "test": {"top1": 0.9}}}
    path = bench.record(entry, tmp_path)
    bench.record({**entry, "tag": "u"}, tmp_path)
    doc = json.loads(path.read_text())
    assert [c["tag"] for c in doc["configs"]] == ["t", "u"], "every run is kept"
    (figure,) = doc["figures"]
    assert figure["ratio"] == pytest.approx(0.55 / 0.4) and figure["ours"] == pytest.approx(0.55)
    assert figure["baseline"] == pytest.approx(0.4) and figure["name"] == "distillation (u)"
    assert "over seeds [0, 1]" in figure["detail"]
