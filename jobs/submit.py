"""Submit a job of this repository to a Ray cluster and follow it; query and stop jobs there.

    python -m jobs.submit pretrain --config pretrain/demo [--set train.steps=100 ...] [--no-follow]
    python -m jobs.submit list                 # the cluster's jobs, newest first
    python -m jobs.submit status JOB_ID        # state, message, entrypoint (never the runtime env)
    python -m jobs.submit logs JOB_ID [--follow]
    python -m jobs.submit stop JOB_ID

The cluster is ``RAY_ADDRESS`` (dashboard ``http://HEAD:8265`` or GCS ``HEAD:6379``), with Ray's
token authentication (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``). The
job runs ``python -m jobs.<JOB> --config <CONFIG> --set ...`` in a copy of this checkout (without
.venv, data/, runs/, .git) with the storage and tracking variables of this shell. Everything is
checked here first; a mistake is one line on stderr and exit status 2. Following a job exits 0
when it SUCCEEDED and 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from jobs._cli import ListOptions
from jobs.registry import configurable
from pipeline.core.errors import TubeletError

PROG = "jobs.submit"
COMMANDS = ("list", "status", "logs", "stop")


def submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} JOB", description="submit python -m jobs.JOB to the cluster at RAY_ADDRESS",
        epilog=f"other commands: {PROG} list | status JOB_ID | logs JOB_ID [--follow] | stop JOB_ID")
    p.add_argument("job", help=f"a job of jobs/registry.py that takes --config: {', '.join(configurable())}")
    p.add_argument("--config", required=True, help="a config under jobs/configs/JOB/ (pretrain/demo or demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value; repeatable; checked here with the job's own loader")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return instead of streaming the log")
    p.add_argument("--env", dest="extra_env", action="append", default=[], metavar="NAME",
                   help="also forward this environment variable (repeatable)")
    p.add_argument("--no-forward-secrets", action="store_true",
                   help="forward endpoints and URIs only; credentials come from the cluster (Secrets, roles)")
    p.add_argument("--skip-tracking-check", action="store_true",
                   help="do not probe an http(s) MLFLOW_TRACKING_URI from here (reachable from the cluster only)")
    p.add_argument("--dry-run", action="store_true", help="check and print what would be submitted; contact nothing")
    p.add_argument("--list-keys", action=ListOptions)
    return p


def command_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="query the jobs of the cluster at RAY_ADDRESS")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every job, newest first").add_argument("--json", action="store_true")
    status = sub.add_parser("status", help="one job's state and message")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="a job's driver log")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    sub.add_parser("stop", help="ask a running job to stop").add_argument("job_id")
    return p


def run_submit(args: argparse.Namespace) -> int:
    from pipeline import submission as sub
    from pipeline.infra.tracking import redact_url

    spec = sub.JobSpec.build(args.job, args.config, args.overrides)
    runtime = sub.runtime_env(extra_env=args.extra_env, forward_secrets=not args.no_forward_secrets)
    for warning in [*spec.local_path_warnings(), *sub.tracking_warnings(spec)]:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    safe = sub.redacted(runtime)
    forwarded = ", ".join(f"{k}={v}" for k, v in safe["env_vars"].items()) or "(nothing)"
    if args.dry_run:
        print(f"entrypoint: {redact_url(spec.entrypoint)}")
        print(f"working_dir: {safe['working_dir']} (excluding {' '.join(safe['excludes'])})")
        print(f"env: {forwarded}")
        return 0
    if not args.skip_tracking_check:
        sub.check_tracking(spec)
    cluster = sub.Cluster.connect()
    job_id = cluster.submit(spec, runtime)
    print(f"{PROG}: submitted {job_id} to {redact_url(cluster.address)}: {redact_url(spec.entrypoint)}")
    print(f"{PROG}: forwarded env: {forwarded}")
    if args.no_follow:
        print(f"{PROG}: follow it with: python -m jobs.submit logs {job_id} --follow")
        print(job_id)
        return 0
    return _finish(cluster, job_id, cluster.follow(job_id, sys.stdout))


def _finish(cluster: Any, job_id: str, status: str) -> int:
    if status == "SUCCEEDED":
        print(f"{PROG}: {job_id} SUCCEEDED")
        return 0
    message = cluster.info(job_id)["message"].splitlines()[:1]
    print(f"{PROG}: {job_id} {status}{': ' + message[0] if message else ''}", file=sys.stderr)
    return 1


def _when(ts_ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms / 1000)) if ts_ms else "-"


def run_command(args: argparse.Namespace) -> int:
    from pipeline.submission import Cluster

    cluster = Cluster.connect()
    if args.command == "list":
        jobs = cluster.jobs()
        if args.json:
            print(json.dumps(jobs, indent=1))
        for j in [] if args.json else jobs:
            print(f"{j['job_id']:32s} {j['status']:10s} {_when(j['start_time'])}  {j['entrypoint'][:120]}")
        if not jobs and not args.json:
            print(f"{PROG}: no jobs on {cluster.address}")
        return 0
    if args.command == "status":
        info = cluster.info(args.job_id)
        if args.json:
            print(json.dumps(info, indent=1))
            return 0
        for key in ("job_id", "status", "message", "entrypoint", "driver_exit_code"):
            print(f"{key:17s} {info[key]}")
        print(f"{'started':17s} {_when(info['start_time'])}\n{'ended':17s} {_when(info['end_time'])}")
        for key, value in info["metadata"].items():
            print(f"{key:17s} {value}")
        return 0
    if args.command == "logs":
        if args.follow:
            return _finish(cluster, args.job_id, cluster.follow(args.job_id, sys.stdout))
        print(cluster.logs(args.job_id), end="")
        return 0
    requested = cluster.stop(args.job_id)
    print(f"{PROG}: {args.job_id}: " + ("stop requested" if requested else
                                         f"already ended ({cluster.info(args.job_id)['status']})"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    is_command = bool(argv) and argv[0] in COMMANDS
    args = (command_parser() if is_command else submit_parser()).parse_args(argv)
    try:
        from pipeline.submission import use_token_auth

        use_token_auth()  # first: loading a job's config imports ray, which reads RAY_AUTH_MODE once
        return run_command(args) if is_command else run_submit(args)
    except TubeletError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        job = "" if is_command else " (a submitted job keeps running: python -m jobs.submit stop JOB_ID)"
        print(f"{PROG}: interrupted{job}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
