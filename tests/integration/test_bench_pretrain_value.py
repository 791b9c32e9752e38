"""The pre-training-value benchmark's own logic: its data plan (an unlabelled split that only
pre-training reads), the choice of the fine-tuning budget on val alone, and its records (every
budget's row kept, the Markdown generated from the JSON, hand-written notes survive a rebuild).
These check the plumbing, not the effect; the effect is what `make bench-pretrain-value` measures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks import bench_pretrain_value as bench
from pipeline.data.shard_index import ShardIndex


def test_default_recipe_and_budget_grid():
    a = bench._args([])
    assert (a.patch_size, a.target, a.classes) == (8, "raw", ["left", "right", "up", "down"])
    assert (a.pretrain_steps, a.finetune_steps, a.val_every, a.seeds) == (1000, 300, 25, [0, 1, 2])
    size = bench._size(a)
    assert "model.patch_size=8" in size and "data.sampling_rate=4" in size


def test_budget_grid_must_divide_the_run(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        bench._args(["--finetune-steps", "300", "--val-every", "40"])
    assert "--val-every 40" in capsys.readouterr().err


def test_budget_is_chosen_on_val_and_test_is_read_once_at_it():
    """Val peaks at 100 steps, test would peak at 300: the choice must follow val, and test is read
    only at the chosen budget (a selection that looked at test would pick 300 or read it twice)."""
    val = {50: 0.40, 100: 0.70, 150: 0.55, 300: 0.70}  # a tie: the first best, as the job keeps it
    test = {50: 0.30, 100: 0.50, 150: 0.60, 300: 0.95}
    reads: list[int] = []

    def test_at(steps: int) -> dict:
        reads.append(steps)
        return {"top1": test[steps]}

    picked = bench.select_and_test(val, test_at)
    assert picked["chosen_steps"] == 100 and reads == [100] and picked["test"]["top1"] == 0.50
    assert [(b["steps"], b["chosen"]) for b in picked["budgets"]] == [(50, False), (100, True), (150, False),
                                                                      (300, False)]
    with pytest.raises(ValueError, match="no val top-1"):
        bench.choose_budget({})


def test_data_has_an_unlabelled_split_that_pretraining_reads_with_train(ray_local, tmp_path):
    a = bench._args(["--per-class", "5", "--unlabelled-per-class", "3", "--classes", "left,up",
                     "--video-size", "32", "--video-frames", "8"])
    shards, counts = bench.make_data(a, tmp_path)
    assert counts == {"unlabelled": 6, "train": 6, "val": 2, "test": 2}
    index = ShardIndex.load(str(shards))
    assert index.num_samples("unlabelled+train") == 12 and index.num_samples("val") == 2
    assert bench.make_data(bench._args([*["--reuse-data"]]), tmp_path)[1] == counts  # reused, not rebuilt


def _init(chosen: int, val_curve: dict[int, float], val: float, test: float) -> dict:
    budgets = [{"steps": s, "val_top1": v, "chosen": s == chosen} for s, v in sorted(val_curve.items())]
    return {"budgets": budgets, "chosen_steps": chosen, "val": {"top1": val}, "test": {"top1": test}}


def _entry(tag: str) -> dict:
    pt = {"steps": 10, "batch_per_rank": 16, "workers": 1, "lr": 1e-3, "encoder_ratio": 0.75, "decoder_ratio": 0.5,
          "loss_first": 0.3, "loss_last": 0.1, "wall_s": 5.0}
    seeds = [{"seed": s, "pretrain": {**pt, "seed": s}, "delta_test_top1": 0.2 - 0.1 * s,
              "results": {"pretrained": _init(50, {25: 0.5, 50: 0.75}, 0.75, 0.6 - 0.1 * s),
                          "random": _init(25, {25: 0.5, 50: 0.25}, 0.5, 0.4)}} for s in (0, 1)]
    return {"tag": tag, "when": "2026-12-02T08:00:00", "wall_s": 10.0, "note": "n", "command": "python -m x",
            "settings": {"model": "vit_tiny", "num_frames": 8, "img_size": 64, "patch_size": 8, "target": "raw",
                         "finetune_steps": 50, "finetune_batch": 16, "workers": 1, "finetune_lr": 1e-3,
                         "layer_decay": 1.0, "mixup": 0.0, "val_every": 25, "eval_clips": 2, "eval_crops": 2,
                         "seeds": [0, 1]},
            "data": {"description": "d"}, "seeds": seeds}


def _legacy(tag: str, pre: float, rnd: float) -> dict:
    split = {"top1": 0.0, "top5": 1.0}
    ft = {"steps": 150, "batch_per_rank": 16, "workers": 1, "lr": 1e-3, "layer_decay": 1.0, "mixup_prob": 0.0,
          "wall_s": 1.0}
    result = {"finetune": ft, "val": split, "test": split}
    results = {"pretrained": copy.deepcopy(result), "random": copy.deepcopy(result)}
    results["pretrained"]["test"]["top1"], results["random"]["test"]["top1"] = pre, rnd
    return {"tag": tag, "wall_s": 10.0, "note": "n", "delta_test_top1": pre - rnd,
            "settings": {"model": "vit_tiny", "num_frames": 8, "img_size": 64, "patch_size": 8, "target": "raw"},
            "data": {"description": "d"}, "results": results,
            "pretrain": {"steps": 10, "batch_per_rank": 16, "workers": 1, "lr": 1e-3, "encoder_ratio": 0.75,
                         "decoder_ratio": 0.5, "loss_first": 0.3, "loss_last": 0.1, "wall_s": 5.0}}


def test_records_keep_every_run_every_budget_and_the_hand_written_notes(tmp_path: Path):
    bench.record(_legacy("old", 0.6, 0.4), tmp_path)
    md = tmp_path / "pretrain_value.md"
    md.write_text(md.read_text() + f"\n{bench.HAND_WRITTEN}\n## Finding\nwritten by hand\n")
    bench.record(_entry("new"), tmp_path)
    assert [e["tag"] for e in json.loads((tmp_path / "pretrain_value.json").read_text())["configs"]] == ["old", "new"]
    text = md.read_text()
    assert text.count(bench.HAND_WRITTEN) == 1 and text.endswith("## Finding\nwritten by hand\n")
    # every budget of every seed and init has its row; test only where val chose
    assert text.count("| 0 | pretrained | 25 | 0.500 |  | not read |") == 1
    assert "| 0 | pretrained | 50 | 0.750 | **yes** | 0.600 |" in text
    assert "| 1 | random | 25 | 0.500 | **yes** | 0.400 |" in text and "| 1 | random | 50 | 0.250 |  | not read |" in text
    assert "| **mean of 2** | | | | | **+0.150** |" in text
    # the earlier fixed-budget runs stay, under a heading that says how their budget was picked
    assert "## Earlier runs: one fixed fine-tuning budget (not chosen on val)" in text
    assert "| old (vit_tiny 8x64 p8 raw) | pretrained |" in text and "delta +0.200" in text


@pytest.mark.slow
def test_quick_benchmark_end_to_end_reads_test_only_at_the_val_choice(tmp_path: Path):
    """The whole benchmark at smoke size (data, pre-training, both fine-tunings, evaluations): for
    every seed and init the chosen budget is the val curve's first best, the job kept that step,
    and test was evaluated once. Minutes on 2 cores: `make test-slow`, not CI."""
    assert bench.main(["--quick", "--workdir", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "last_entry.json").read_text())
    for run in entry["seeds"]:
        for init in ("pretrained", "random"):
            r = run["results"][init]
            curve = {b["steps"]: b["val_top1"] for b in r["budgets"]}
            assert sorted(curve) == [2, 4] and r["chosen_steps"] == bench.choose_budget(curve)
            assert r["finetune"]["kept"]["step"] == r["chosen_steps"]
            assert "top1" in r["test"] and "top1" in r["val"]
    test_evals = sorted(p.name for p in (tmp_path / "eval").iterdir() if p.name.endswith("-test"))
    assert test_evals == ["ft-quick-s0-pretrained-test", "ft-quick-s0-random-test"]
