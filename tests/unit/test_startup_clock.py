"""Where a job's start-up goes: the clock the driver starts and each rank's loop finishes."""

from __future__ import annotations

import pytest

from pipeline.train.meter import Meter, StartupClock


def test_phases_are_measured_between_consecutive_marks_in_phase_order() -> None:
    clock = StartupClock({"launch": 100.0, "ray": 104.5})
    clock.mark("engine", at=130.0)  # a phase that did not happen (no tracking) is skipped, not zero
    clock.mark("workers", at=120.0)  # marks may arrive from other processes in any order
    clock.mark("first_step", at=133.0)
    assert clock.seconds() == {"ray": 4.5, "workers": 15.5, "engine": 10.0, "first_step": 3.0}
    assert clock.metrics() == {"startup/ray_s": 4.5, "startup/workers_s": 15.5, "startup/engine_s": 10.0,
                               "startup/first_step_s": 3.0, "startup/total_s": 33.0}
    assert clock.summary() == "start-up 33.0 s: ray 4.5 s, workers 15.5 s, engine 10.0 s, first step 3.0 s"


def test_a_phase_keeps_its_first_mark_and_unknown_phases_are_refused() -> None:
    clock = StartupClock({"launch": 0.0})
    clock.mark("ray", at=2.0)
    clock.mark("ray", at=9.0)  # a restarted worker group does not move the launch's marks
    assert clock.seconds() == {"ray": 2.0}
    with pytest.raises(ValueError, match="unknown start-up phase 'warmup'"):
        clock.mark("warmup")


def test_the_meter_remembers_when_the_first_step_ended() -> None:
    meter = Meter(clips_per_step=4, tokens_per_clip=8, flops_per_clip=1.0, total_steps=3)
    assert meter.first_step_at is None
    meter.step()
    first = meter.first_step_at
    meter.step()
    assert first is not None and meter.first_step_at == first


def test_an_embedded_ray_runs_without_the_services_it_cannot_use_unless_the_user_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from pipeline.orchestration.ray_train import EMBEDDED_RAY_ENV, embedded_env

    watcher, metrics = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "RAY_TRAIN_METRICS_ENABLED"
    assert set(EMBEDDED_RAY_ENV) == {watcher, metrics}
    from ray.train.v2._internal import constants  # the names this Ray reads (a renamed switch would be ignored)

    assert (constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR, constants.METRICS_ENABLED_ENV_VAR) == (watcher, metrics)
    monkeypatch.delenv(watcher, raising=False)
    monkeypatch.setenv(metrics, "1")  # the user's value wins
    with embedded_env():
        assert os.environ[watcher] == "0" and os.environ[metrics] == "1"
    assert watcher not in os.environ and os.environ[metrics] == "1"  # as it was


def test_ray_train_services_with_nothing_to_do_are_left_out_of_the_controller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's own default callbacks: the dataset callback (a DatasetManager actor) goes when
    there are no Ray Datasets, the placement-group cleaner (an actor polling the State API) when
    there is no dashboard; everything else stays; the opt-out keeps them all."""
    from ray.train.torch import TorchTrainer

    from pipeline.orchestration.ray_train import RAY_TRAIN_SERVICES_ENV, idle_services

    monkeypatch.delenv(RAY_TRAIN_SERVICES_ENV, raising=False)
    callbacks = TorchTrainer(lambda: None)._create_default_callbacks()
    names = lambda cbs: sorted(type(cb).__name__ for cb in cbs)  # noqa: E731
    assert names(idle_services(callbacks, datasets=False, dashboard=False)) == [
        "DatasetsCallback", "PlacementGroupCleanerCallback"]
    assert names(idle_services(callbacks, datasets=True, dashboard=False)) == ["PlacementGroupCleanerCallback"]
    assert idle_services(callbacks, datasets=True, dashboard=True) == []
    monkeypatch.setenv(RAY_TRAIN_SERVICES_ENV, "all")
    assert idle_services(callbacks, datasets=False, dashboard=False) == []
