"""The pre-training-value benchmark's own logic: its data plan (an unlabelled split that only
pre-training reads) and its records (every run kept, hand-written notes survive a rebuild).
The jobs it drives are tested where they live; the full benchmark is `make bench-pretrain-value`."""

from __future__ import annotations

import copy
import json

from benchmarks import bench_pretrain_value as bench
from pipeline.data.shards import ShardIndex


def test_defaults_are_the_configuration_that_shows_the_effect():
    a = bench._args([])
    assert (a.patch_size, a.target, a.classes) == (8, "raw", ["left", "right", "up", "down"])
    assert (a.pretrain_steps, a.finetune_steps, a.texture, a.noise) == (1000, 150, 1.0, 2.0)
    size = bench._size(a)
    assert "model.patch_size=8" in size and "data.sampling_rate=4" in size


def test_data_has_an_unlabelled_split_that_pretraining_reads_with_train(ray_local, tmp_path):
    a = bench._args(["--per-class", "5", "--unlabelled-per-class", "3", "--classes", "left,up",
                     "--video-size", "32", "--video-frames", "8"])
    shards, counts = bench.make_data(a, tmp_path)
    assert counts == {"unlabelled": 6, "train": 6, "val": 2, "test": 2}
    index = ShardIndex.load(str(shards))
    assert index.num_samples("unlabelled+train") == 12 and index.num_samples("val") == 2
    assert bench.make_data(bench._args([*["--reuse-data"]]), tmp_path)[1] == counts  # reused, not rebuilt


def _entry(tag: str, pre: float, rnd: float) -> dict:
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


def test_records_keep_every_run_and_the_hand_written_notes(tmp_path):
    bench.record(_entry("first", 0.6, 0.4), tmp_path)
    md = tmp_path / "pretrain_value.md"
    md.write_text(md.read_text() + f"\n{bench.HAND_WRITTEN}\n## Finding\nwritten by hand\n")
    bench.record(_entry("second", 0.5, 0.5), tmp_path)
    assert [e["tag"] for e in json.loads((tmp_path / "pretrain_value.json").read_text())["configs"]] == ["first",
                                                                                                        "second"]
    text = md.read_text()
    assert "| first (vit_tiny 8x64 p8 raw) | pretrained |" in text and "| second (vit_tiny 8x64 p8 raw) | random |" in text
    assert text.count(bench.HAND_WRITTEN) == 1 and text.endswith("## Finding\nwritten by hand\n")
    assert "delta +0.200" in text
