"""Fixtures every test folder may use."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database as MLflow makes it on first use (its schema migrations, seconds
    of work), made once per session."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_db(tmp_path: Path, mlflow_template: Path) -> str:
    """``<tmp_path>/mlflow.db``, a fresh copy of :func:`mlflow_template`: the test's own tracking
    database without paying the schema migrations again (a module uses it with
    ``pytestmark = pytest.mark.usefixtures("mlflow_db")`` and keeps its ``sqlite:///`` URIs)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template, db)
    return f"sqlite:///{db}"
