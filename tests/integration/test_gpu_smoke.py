"""`make gpu-smoke CPU=1`: the GPU check's code path, run for real on CPU (what CI can run).

On a GPU node the same script asserts NCCL and cuda placement; here it asserts gloo and cpu,
so a loop that stopped reporting its backend or device, or a stage that broke, fails this test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import gpu_smoke


def test_smoke_runs_every_stage_through_the_real_jobs_on_cpu(ray_local: None, tmp_path: Path) -> None:
    result = gpu_smoke.run_smoke(tmp_path / "work", cpu=True, gpus=0, steps=3, shards=None)
    assert result["failures"] == [] and result["passed"], result["failures"]
    stages = result["stages"]
    for stage in ("pretrain", "finetune"):
        assert stages[stage]["dist_backend"] == "gloo" and stages[stage]["device"] == "cpu"
        assert stages[stage]["clips_per_s"] > 0 and 0 <= stages[stage]["data_wait_frac"] <= 1
    assert stages["evaluate"]["videos"] == stages["extract"]["rows"] > 0
    json.dumps(result)  # the report is plain JSON


def test_checks_refuse_a_gloo_or_cpu_run_where_nccl_and_cuda_are_expected() -> None:
    """What a GPU run asserts: a process group that fell back to gloo, or a model left on the CPU,
    is a failure (the two faults a CPU run cannot show, read from what the jobs logged)."""
    good = {"dist_backend": "nccl", "device": "cuda:0", "status": "FINISHED"}
    figures = {"pretrain": dict(good), "finetune": dict(good), "evaluate": {"status": "FINISHED"}}
    assert gpu_smoke.check(figures, "nccl", "cuda") == []
    figures["pretrain"]["dist_backend"] = "gloo"
    figures["finetune"]["device"] = "cpu"
    failures = gpu_smoke.check(figures, "nccl", "cuda")
    assert len(failures) == 2 and "gloo" in failures[0] and "cpu" in failures[1]


def test_without_a_gpu_the_gpu_mode_refuses_in_one_line(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, on any machine
    assert gpu_smoke.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cpu" in err[0]


def test_the_committed_result_says_whether_a_gpu_run_exists() -> None:
    result = json.loads((Path(gpu_smoke.__file__).parent / "results" / "gpu_smoke.json").read_text())
    assert result["gpu_run"] in (True, None)
    if result["gpu_run"] is None:
        assert "No GPU run exists yet" in result["note"]
    else:
        assert result["passed"] and result["stages"]["pretrain"]["dist_backend"] == "nccl"
