"""Evaluation and extraction put the model on the training device (the GPU a rank reserved).

Stand-in for the GPU case: the training device is made ``meta`` (a device no weights load on by
themselves), and the job's pass over the data is replaced by a probe that records where the
model's parameters are, then stops the job. On a GPU node the same code puts them on
``cuda:LOCAL_RANK``; a job that kept them where they were loaded would run on the CPU there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.core.config import load_config
from pipeline.models import create_model
from pipeline.train import comm
from pipeline.train.job_configs import EvaluateConfig
from pipeline.train.model_registry import ModelCard, write_model_folder
from pipeline.train.session import LocalSession
from tests.integration.test_extract import _cfg as extract_cfg
from tests.integration.test_extract import data  # noqa: F401  (the module's shards fixture)

REPO = Path(__file__).resolve().parents[2]


class _Placed(Exception):
    pass


def _probe(*args, **kwargs):
    model = args[0]
    raise _Placed({p.device.type for p in model.parameters()})


@pytest.fixture
def meta_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(comm, "training_device", lambda: torch.device("meta"))


def test_extraction_runs_on_the_training_device(data: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch, meta_device: None) -> None:
    import pipeline.train.extract as extract

    monkeypatch.setattr(extract, "extract_pass", _probe)
    cfg = extract_cfg(data, tmp_path / "features", "scaling.use_gpu=true", "model.init=")
    with pytest.raises(_Placed) as placed:
        extract.extract(cfg, LocalSession(tmp_path / "session"))
    assert placed.value.args[0] == {"meta"}


def test_evaluation_runs_on_the_training_device(data: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch, meta_device: None) -> None:
    import pipeline.train.evaluate as evaluate

    folder = tmp_path / "model"
    model = create_model("vit_tiny", "classify", num_classes=2, num_frames=4, img_size=32)
    card = ModelCard(model={"name": "vit_tiny", "num_classes": 2, "num_frames": 4, "img_size": 32},
                     class_names=["left", "right"], data={"num_frames": 4, "input_size": 32})
    write_model_folder(model.state_dict(), card, str(folder))
    monkeypatch.setattr(evaluate, "evaluate_pass", _probe)
    cfg = load_config(EvaluateConfig, REPO / "jobs/configs/evaluate/demo.toml", [
        f"data.shards={data['shards']}", f"run.output={tmp_path / 'eval'}", f"model.init={folder}", "data.sampling_rate=2", "data.batch_size=2",
        "data.num_workers=0", "data.split=train", "tracking.enabled=false"])
    with pytest.raises(_Placed) as placed:
        evaluate.evaluate(cfg, LocalSession(tmp_path / "session"))
    assert placed.value.args[0] == {"meta"}


def test_loader_worker_processes_decode_on_one_thread(data: dict[str, Path], tmp_path: Path,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The training process takes ``cpus_per_worker - data.num_workers`` threads because each loader
    worker process runs on one: one torch thread (DataLoader's workers) and one decoder thread."""
    import os

    import pipeline.data.decoding as decoding
    from pipeline.data.loader import eval_loader

    record = tmp_path / "threads.txt"
    real = decoding.open_video

    def spy(*args, **kwargs):  # runs in the forked worker process: the record goes through a file
        with record.open("a") as f:
            f.write(f"{os.getpid()} {torch.get_num_threads()} {kwargs.get('threads')}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "open_video", spy)
    # fork, so that the spy patched here is in the worker (a forkserver's workers import afresh); torch's
    # worker loop sets one thread and the clip spec the decoder's whatever the start method
    cfg = extract_cfg(data, tmp_path / "features", "data.num_workers=1", "data.worker_start=fork")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        next(iter(eval_loader(cfg.data, 0, 1, require_labels=False)))
    finally:
        torch.set_num_threads(before)
    rows = [line.split() for line in record.read_text().splitlines()]
    assert rows and all(pid != str(os.getpid()) for pid, _, _ in rows), "decoded in the training process"
    assert {(torch_threads, decoder) for _, torch_threads, decoder in rows} == {("1", "1")}, rows
