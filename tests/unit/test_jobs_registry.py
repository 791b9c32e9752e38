"""jobs/registry.py is the one list of jobs: it matches the modules of jobs/ both ways, and each
entry's config class is the one the module's ``__main__`` parses."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from jobs.__main__ import main
from jobs.registry import JOBS, configurable

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"


def _entry_points() -> dict[str, str]:
    """``{module name: config class name passed to job_main ('' = none)}`` of every runnable jobs/*.py."""
    found = {}
    for path in sorted(JOBS_DIR.glob("*.py")):
        source = path.read_text()
        if path.name.startswith("_") or 'if __name__ == "__main__"' not in source:
            continue
        calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "job_main" and n.args]
        found[path.stem] = calls[0].args[0].id if calls and isinstance(calls[0].args[0], ast.Name) else ""
    return found


def test_every_job_module_is_registered_and_every_entry_is_a_module() -> None:
    assert set(_entry_points()) == set(JOBS)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_the_registered_config_class_is_the_one_the_job_parses(name: str) -> None:
    job = JOBS[name]
    assert job.config == _entry_points()[name]
    if job.config:
        assert dataclasses.is_dataclass(job.config_class()) and callable(job.load().run)
    assert (name in configurable()) == bool(job.config)


def test_python_m_jobs_lists_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(JOBS)
