"""pipeline.submission and jobs.submit without a cluster: what would run, with which env, and
every mistake that must stop a submission on the laptop in one line (exit status 2)."""

from __future__ import annotations

import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobs import submit as cli
from pipeline.core.config import ConfigError
from pipeline.core.net import free_port
from pipeline.infra.tracking import TrackingError
from pipeline.submission import (
    EXCLUDES,
    JobSpec,
    RayAuth,
    SubmissionError,
    check_address,
    check_tracking,
    cluster_address,
    job_names,
    ray_auth,
    redacted,
    resolve_config,
    runtime_env,
    tracking_warnings,
)

REPO = Path(__file__).resolve().parents[2]
SECRET = "wJalrXUtnFEMI-not-a-real-key-7f3a"


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No cluster, tracking or credential variables from the developer's shell; a HOME without a token."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                 "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # restored afterwards even if the CLI sets it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


# --- what runs ------------------------------------------------------------------------------------

def test_jobs_are_the_config_driven_modules() -> None:
    names = job_names()
    assert {"pretrain", "finetune", "evaluate", "shard", "dataset", "plan", "extract"} <= set(names)
    assert not {"submit", "predict", "_cli"} & set(names)  # no --config: nothing to submit this way


@pytest.mark.parametrize("given", ["demo", "pretrain/demo", "pretrain/demo.toml", "jobs/configs/pretrain/demo.toml"])
def test_config_names_resolve_inside_the_jobs_own_folder(given: str) -> None:
    assert resolve_config("pretrain", given) == "pretrain/demo"


@pytest.mark.parametrize("job,config,message", [
    ("pretrian", "demo", "unknown job 'pretrian': choose one of"),
    ("predict", "demo", "unknown job 'predict'"),
    ("pretrain", "nope", "unknown config 'nope' for jobs.pretrain: choose one of pretrain/demo"),
    ("pretrain", "finetune/demo", "unknown config 'finetune/demo'"),  # another job's config
    ("pretrain", "/etc/passwd", "unknown config"),  # only configs that travel with the checkout
])
def test_unknown_job_or_config_is_refused_with_the_choices(job: str, config: str, message: str) -> None:
    with pytest.raises(SubmissionError, match=message.replace("(", r"\(")) as info:
        JobSpec.build(job, config)
    assert "\n" not in str(info.value)


def test_overrides_are_checked_by_the_jobs_own_loader() -> None:
    spec = JobSpec.build("pretrain", "pretrain/demo", ["train.steps=3", "run.name=with space"])
    assert spec.resolved.train.steps == 3
    assert shlex.split(spec.entrypoint) == ["python", "-m", "jobs.pretrain", "--config", "pretrain/demo",
                                            "--set", "train.steps=3", "--set", "run.name=with space"]
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        JobSpec.build("pretrain", "pretrain/demo", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="train.steps"):
        JobSpec.build("pretrain", "pretrain/demo", ["train.steps=many"])


def test_paths_the_cluster_will_not_have_are_pointed_out() -> None:
    local = JobSpec.build("pretrain", "pretrain/demo", ["tracking.tracking_uri=sqlite:///runs/x.db"])
    warned = " ".join(local.local_path_warnings())
    assert "data.shards='data/shards/synthetic'" in warned and "run.output='runs/pretrain'" in warned
    assert "tracking.tracking_uri" in warned
    shared = JobSpec.build("pretrain", "pretrain/demo", ["data.shards=s3://b/shards", "run.output=/shared/runs"])
    assert shared.local_path_warnings() == []


def test_a_job_without_a_tracking_server_is_warned_about() -> None:
    spec = JobSpec.build("pretrain", "pretrain/demo")
    assert "MLFLOW_TRACKING_URI" in tracking_warnings(spec, env={})[0]
    assert tracking_warnings(spec, env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == []
    off = JobSpec.build("pretrain", "pretrain/demo", ["tracking.enabled=false"])
    assert tracking_warnings(off, env={}) == []


# --- with which code and env ----------------------------------------------------------------------

def test_runtime_env_forwards_storage_and_tracking_but_not_ray_auth() -> None:
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ACCESS_KEY_ID": "AK",
           "AWS_ENDPOINT_URL": "http://minio:9000", "RAY_AUTH_TOKEN": "ray-token", "RAY_AUTH_MODE": "token",
           "HOME": "/root", "MY_FLAG": "1"}
    rt = runtime_env(root=REPO, env=env, extra_env=["MY_FLAG"])
    assert rt["working_dir"] == str(REPO)
    assert rt["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_SECRET_ACCESS_KEY": SECRET,
                              "AWS_ACCESS_KEY_ID": "AK", "AWS_ENDPOINT_URL": "http://minio:9000", "MY_FLAG": "1"}
    no_secrets = runtime_env(root=REPO, env=env, forward_secrets=False)["env_vars"]
    assert set(no_secrets) == {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"}


def test_a_job_gets_at_least_what_its_driver_passes_on_to_its_workers() -> None:
    from pipeline.core.job_env import JOB_ENV
    from pipeline.orchestration.ray_train import FORWARDED_ENV

    everything = {name: f"value-of-{name}" for name in (*JOB_ENV, "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    sent = runtime_env(root=REPO, env=everything)["env_vars"]
    assert set(FORWARDED_ENV) <= set(sent)
    assert not [n for n in sent if n.startswith("RAY_")]


def test_redacted_runtime_env_hides_secret_values_and_url_credentials() -> None:
    rt = runtime_env(root=REPO, env={"AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": "pw-123456",
                                     "MLFLOW_TRACKING_URI": "https://alice:hunter22@mlflow.example.com"})
    safe = redacted(rt)
    text = repr(safe)
    assert SECRET not in text and "pw-123456" not in text and "hunter22" not in text
    assert safe["env_vars"]["AWS_SECRET_ACCESS_KEY"] == "***"
    assert safe["env_vars"]["MLFLOW_TRACKING_URI"] == "https://***@mlflow.example.com"
    assert rt["env_vars"]["AWS_SECRET_ACCESS_KEY"] == SECRET  # the job still gets the real value


def test_dry_run_prints_no_secret(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://bob:s3cretpw@127.0.0.1:5000")
    assert cli.main(["pretrain", "--config", "demo", "--set", "train.steps=2", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and "s3cretpw" not in out.out + out.err
    assert "AWS_SECRET_ACCESS_KEY=***" in out.out
    assert "entrypoint: python -m jobs.pretrain --config pretrain/demo --set train.steps=2" in out.out


def test_the_working_dir_package_leaves_out_venv_data_runs_and_git(tmp_path: Path) -> None:
    """Ray's own packaging (what the Jobs SDK uploads) with our excludes, on a checkout-shaped tree."""
    from ray._private.runtime_env.packaging import create_package

    files = [".venv/lib/site.py", "data/shards/train-000000.tar", "runs/pretrain/demo/loop.json",
             ".cluster/local/env", ".git/HEAD", "jobs/pretrain.py", "jobs/configs/pretrain/demo.toml",
             "pipeline/data/loader.py", "pipeline/__pycache__/x.cpython-311.pyc", "cluster/local/up.sh"]
    for name in files:
        (tmp_path / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "repo" / name).write_text("x")
    rt = runtime_env(root=tmp_path / "repo", env={})
    create_package(rt["working_dir"], tmp_path / "pkg.zip", include_gitignore=True, excludes=rt["excludes"])
    shipped = {n.rstrip("/") for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    # pipeline/data/ is code: the data/ exclude is anchored at the root.
    assert shipped == {"jobs/pretrain.py", "jobs/configs/pretrain/demo.toml", "pipeline/data/loader.py",
                       "cluster/local/up.sh"}
    assert {"/.venv", "/data", "/runs", "/.cluster", "/.git"} <= set(EXCLUDES)


# --- where: address and token ---------------------------------------------------------------------

def test_cluster_address_follows_ray(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SubmissionError, match="RAY_ADDRESS is not set"):
        cluster_address({})
    with pytest.raises(SubmissionError, match="names no cluster"):
        cluster_address({"RAY_ADDRESS": "auto"})
    assert cluster_address({"RAY_ADDRESS": "h:6379", "RAY_API_SERVER_ADDRESS": "http://h:8265"}) == "http://h:8265"


def test_an_address_nobody_listens_on_is_one_line() -> None:
    port = free_port()
    for address in (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"):
        with pytest.raises(SubmissionError, match=f"no Ray cluster answers at {address} .*Connection refused"):
            check_address(address, timeout=2)


def test_token_sources_in_rays_order(tmp_path: Path) -> None:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    (tmp_path / "tok").write_text("from-path")
    home = {"HOME": str(tmp_path)}
    assert ray_auth(home) == RayAuth("token", "from-home", str(tmp_path / ".ray" / "auth_token"))
    assert ray_auth({**home, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}).token == "from-path"
    both = {**home, "RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "tok")}
    assert ray_auth(both).token == "from-env"
    assert ray_auth({**home, "RAY_AUTH_MODE": "disabled"}).headers() == {}
    assert ray_auth({"HOME": str(tmp_path / "nobody")}).mode == "disabled"
    assert ray_auth({"RAY_AUTH_TOKEN": "t"}).headers() == {"Authorization": "Bearer t"}
    assert "from-env" not in repr(ray_auth({"RAY_AUTH_TOKEN": "from-env"}))  # never in a log line
    with pytest.raises(SubmissionError, match="RAY_AUTH_MODE=token but no token"):
        ray_auth({"HOME": str(tmp_path / "nobody"), "RAY_AUTH_MODE": "token"})
    with pytest.raises(SubmissionError, match="RAY_AUTH_TOKEN_PATH="):
        ray_auth({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


# --- one line, exit status 2 ----------------------------------------------------------------------

def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and "warning:" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("jobs.submit: error: ") and "Traceback" not in err
    return lines[0]


SHARED = ["--set", "data.shards=/shared/shards", "--set", "run.output=/shared/runs"]


def test_submit_without_ray_address(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["pretrain", "--config", "demo", *SHARED]) == 2
    assert "RAY_ADDRESS is not set" in _one_error_line(capsys.readouterr().err)


def test_submit_to_an_unreachable_cluster(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    clean_env.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["pretrain", "--config", "demo", *SHARED]) == 2
    assert "no Ray cluster answers at http://127.0.0.1:" in _one_error_line(capsys.readouterr().err)
    assert cli.main(["list"]) == 2
    _one_error_line(capsys.readouterr().err)


def test_submit_while_the_tracking_server_is_down(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    port = free_port()
    clean_env.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    clean_env.setenv("RAY_ADDRESS", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["pretrain", "--config", "demo", *SHARED]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in line
    with pytest.raises(TrackingError):
        check_tracking(JobSpec.build("pretrain", "demo"), env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    # A config that turns tracking off is not held back by a server it will not use.
    assert check_tracking(JobSpec.build("pretrain", "demo", ["tracking.enabled=false"]),
                          env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}) == ""


def test_bad_input_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    """The module as a user runs it: a process, one line on stderr, no traceback, status 2."""
    for args, message in ((["pretrian", "--config", "demo"], "unknown job 'pretrian'"),
                          (["pretrain", "--config", "demo", "--set", "train.stepz=1"], "unknown key 'train.stepz'")):
        out = subprocess.run([sys.executable, "-m", "jobs.submit", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert out.returncode == 2, out.stderr
        assert message in _one_error_line(out.stderr)
