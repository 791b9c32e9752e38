"""The benchmark scripts run (tiny sizes): a broken benchmark is found here, not on a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_vit_g_step_script_runs_tiny_on_two_ranks() -> None:
    """Same code path as `make vit-g-step` (rank launch, zero.Init, masks, timed steps) on vit_tiny."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.vit_g_step", "--tiny"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_pretrain_value_ablation_runs_tiny_and_records_its_table(tmp_path: Path) -> None:
    """The plain-PyTorch ablation: pre-trains, fine-tunes both inits, prints their accuracies, and
    appends the run to its JSON, from which the Markdown table is rebuilt (two runs: two rows)."""
    out = tmp_path / "ablation.json"
    args = ["--per-class", "4", "--unlabelled", "2", "--pt-steps", "2", "--steps", "2", "--bs", "4", "--depth", "1",
            "--classes", "cw,ccw", "--raw-target", "--grain", "0", "--out", str(out)]
    for pt_steps in ("2", "0"):  # the second run fine-tunes the random init only
        args[5] = pt_steps
        result = subprocess.run([sys.executable, "-m", "benchmarks.pretrain_value_ablation", *args], cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data {'train': (6, 3, 8, 64, 64), 'val': (2, 3, 8, 64, 64)} unlabelled (10,")
    runs = json.loads(out.read_text())["runs"]
    assert [sorted(r["results"]) for r in runs] == [["pretrained", "random"], ["random"]]
    table = out.with_suffix(".md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| 20")]
    assert len(rows) == 2 and "--pt-steps 2" in rows[0] and rows[1].split(" | ")[2:4] == ["-", "-"]
    first = runs[0]["results"]["pretrained"]
    assert f"{first['train_top1']:.2f} / {first['val_top1']:.2f}" in rows[0]


# ------------------------------------------------------------------------------------------------
# make bench's benchmarks at smoke size: each writes its JSON with positive figures (no timings checked)

FIGURE_FIELDS = {"name", "ratio", "ours", "baseline", "unit", "baseline_name"}
RUN_FIELDS = {"benchmark", "date", "command", "machine", "load_avg_before", "figures"}


def _bench(module: str, out: Path, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    data = json.loads(out.read_text())
    assert RUN_FIELDS <= set(data) and data["figures"]
    for f in data["figures"]:
        assert FIGURE_FIELDS <= set(f), f
        assert f["ratio"] > 0 and f["ours"] > 0 and f["baseline"] > 0, f
    return data


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench_results")


def test_shard_and_data_benchmarks_quick(results: Path) -> None:
    """Sharding, the job vs the design before it (the driver writes), 1 and 2 Ray workers on 6 tiny videos; the
    loader vs the reference and raw decode on its shards."""
    shards = results / "shards"
    shard = _bench("bench_shard", results / "sharding.json", "--quick", "--keep", str(shards))
    assert set(shard["medians"]) == {"old_1w", "new_1w", "old_2w", "new_2w"} and (shards / "index.json").exists()
    assert len(shard["figures"]) == 4  # videos/s at 1 and 2 workers, driver bytes received, driver peak RSS
    data = _bench("bench_data", results / "data_loading.json", "--quick", "--shards", str(shards))
    assert {"raw_decode", "ours_k1", "ours_k4", "ours_device_k4", "reference", "reference_rep_k4"} == set(data["medians"])
    # k=1 vs the reference, k=4 vs the reference with the same 4 views per decode, raw decode at k=1 and k=4,
    # and at k=4 with the crops resized on the training device (the loader alone)
    assert [f["name"].split(": ")[1] for f in data["figures"]] == [
        "ours / reference loader (a)", "ours / raw decode limit (b)", "ours / reference with its repeated aug",
        "ours / raw decode limit (b)", "loader / raw decode limit (b)"]
    assert data["shipped_bytes_per_clip"]["4"]["device"] > 0
    assert f"{os.cpu_count()}-core machine" in shard["figures"][0]["detail"]


def test_shard_plan_benchmark_quick(results: Path) -> None:
    """Planning a synthetic manifest (20,000 rows at --quick): the SQLite plan vs the old in-memory lists."""
    data = _bench("bench_shard_plan", results / "shard_plan.json", "--quick")
    assert set(data["medians"]) == {"old", "new"} and len(data["figures"]) == 2
    assert data["medians_all"]["new"]["rows"] == data["medians_all"]["old"]["rows"] == 20_000


def test_ingest_benchmark_quick(results: Path) -> None:
    data = _bench("bench_ingest", results / "ingest.json", "--quick")
    assert data["output_bytes"]["remux"] > 0 and data["output_bytes"]["transcode"] > 0
    assert [f["unit"] for f in data["figures"]] == ["videos/s", "bytes"]


def test_finetune_augmentation_benchmark_quick(tmp_path: Path) -> None:
    """bench_data --finetune: official vs before on the same labelled shards, views and batch."""
    from tests.unit.shard_fixtures import make_shards

    make_shards(tmp_path / "shards", [4, 4])
    data = _bench("bench_data", tmp_path / "ft.json", "--finetune", "--quick", "--shards", str(tmp_path / "shards"))
    assert set(data["medians"]) == {"ft_multiscale_k1", "ft_official_k1", "ft_multiscale_k4", "ft_official_k4"}
    assert [f["name"] for f in data["figures"]] == [f"fine-tune augmentation k={k}: official / before" for k in (1, 4)]


def test_flops_benchmark_quick(results: Path) -> None:
    data = _bench("bench_flops", results / "flops.json", "--quick")
    assert data["medians"]["matmul"] > 0 and len(data["figures"]) == 2


def test_zero_benchmark_quick(results: Path) -> None:
    """ZeRO-3 on 2 gloo ranks: model-state bytes by role against jobs.plan's estimate."""
    data = _bench("bench_zero", results / "zero_memory.json", "--quick")
    held = data["stages"]["3"]["ranks"][0]["held_bytes"]
    assert held["params"] > 0 and held["optimizer_states"] > 0 and held["model_states"] > 0


def test_decoders_benchmark_quick(results: Path) -> None:
    """bench_decoders --quick: decord 0.6.0 and decord2 each in its own --target folder (pip-installed
    once into benchmarks/results/tmp/decoders: the first run needs PyPI), every fixture video, one
    speed round on tiny clips."""
    data = _bench("bench_decoders", results / "decoders.json", "--quick")
    assert set(data["medians"]) == {"pyav", "decord0.6", "decord2"}
    assert [f["name"] for f in data["figures"]] == ["decode speed: decord2 3.4.0 / decord 0.6.0",
                                                    "decode speed: decord2 3.4.0 / PyAV"]
    assert (data["decoders"]["decord0.6"]["version"], data["decoders"]["decord2"]["version"]) == ("0.6.0", "3.4.0")
    assert all(info["module"].endswith("decord") for name, info in data["decoders"].items() if name != "pyav")
    for dec in ("decord0.6", "decord2"):
        assert {"h264", "mjpeg_avi", "ffv1_odd_mkv"} <= set(data["agreement"][dec]["bit_identical"])
        assert data["videos"]["missing"]["summary"][dec].startswith("refused")
    assert data["videos"]["rotated"]["summary"]["decord2"].startswith("40 frames, decode failed")


def test_report_builds_the_table_and_plots(results: Path) -> None:
    """The combined table from whatever JSON the tests above left (plus the recorded ViT-g step)."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.report", "--no-run", "--results-dir", str(results)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    table = (results / "README.md").read_text()
    measured, _, outside = table.partition("## Against an outside figure (not measured in one run)")
    assert "| benchmark | figure | ratio |" in measured and "vit_g_step" not in measured
    # the typed-in ViT-g baseline: its own table, labelled, 1 rank against 1 rank
    assert outside.count("| vit_g_step |") == 2 and "OUTSIDE FIGURE, not re-measured" in outside
    assert "2 ranks" not in outside and "1 rank" in outside
    assert len(list(results.glob("*.png"))) >= 1
