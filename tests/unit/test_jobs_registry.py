"""jobs/registry.py is the one list of jobs: it matches the modules of jobs/ both ways, and each
entry's config class is the one the module's ``__main__`` parses."""

from __future__ import annotations

import ast
import dataclasses
import runpy
import sys
import warnings
from pathlib import Path

import pytest

from jobs.__main__ import main
from jobs.registry import JOBS, configurable
from pipeline.core.config import describe

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


README = JOBS_DIR.parent / "README.md"


def test_the_readme_jobs_table_is_the_registry() -> None:
    """README's "## Jobs" table lists every job of jobs/registry.py, in its order, saying which take --config."""
    section = README.read_text().split("\n## Jobs\n", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `jobs.")]
    assert [row[0] for row in rows] == [f"`{job.module}`" for job in JOBS.values()]
    assert [row[1] == "`--config`" for row in rows] == [bool(job.config) for job in JOBS.values()]


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_takes_list_keys(name: str, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m jobs.<name> --list-keys`` as the README promises, run in this process (its
    ``__main__`` block, as ``python -m`` runs it): exit 0 and one line per key or option."""
    monkeypatch.setattr(sys, "argv", [f"jobs.{name}", "--list-keys"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(JOBS[name].module, run_name="__main__", alter_sys=True)
    assert exited.value.code in (0, None), capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2, lines
    keys = [line.split()[0] for line in lines]
    if JOBS[name].config:
        assert keys == [row[0] for row in describe(JOBS[name].config_class())]
    else:  # a job without a config file lists its command-line options
        assert all(k.startswith("--") or k.isidentifier() for k in keys), keys
