#!/usr/bin/env bash
# Stop the MLflow server that serve.sh started, and only it: SIGTERM to the process group led by
# the recorded pid (the `mlflow` CLI and its uvicorn workers), SIGKILL to what is left after
# TUBELET_MLFLOW_STOP_TIMEOUT_S (default 20). Idempotent: nothing recorded, nothing to do.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE_DIR="${TUBELET_MLFLOW_DIR:-$REPO/.cluster/mlflow}"
TIMEOUT_S="${TUBELET_MLFLOW_STOP_TIMEOUT_S:-20}"
PID_FILE="$STATE_DIR/server.pid"

if [[ ! -f "$PID_FILE" ]]; then
    echo "mlflow-stop: nothing recorded in $STATE_DIR"
    exit 0
fi
pid="$(cat "$PID_FILE")"

group() {  # running members of process group $1 (zombies have exited already)
    ps -eo pid=,pgid=,stat= | awk -v g="$1" '$2 == g && $3 !~ /^Z/ {print $1}'
}

# Ours only if that pid still leads its group and is an `mlflow ... server` (not a reused pid).
cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')"
if [[ "$pid" =~ ^[0-9]+$ && "$cmd" == *mlflow*" server "* && "$pgid" == "$pid" ]]; then
    kill -TERM -- "-$pid" 2>/dev/null && echo "mlflow-stop: SIGTERM to process group $pid"
    deadline=$((SECONDS + TIMEOUT_S))
    while (( SECONDS < deadline )) && [[ -n "$(group "$pid")" ]]; do sleep 0.3; done
    left="$(group "$pid")"
    if [[ -n "$left" ]]; then
        echo "mlflow-stop: SIGKILL to what is left after ${TIMEOUT_S} s:" $left
        kill -KILL -- "-$pid" 2>/dev/null
    fi
else
    echo "mlflow-stop: pid $pid is not a running server started by serve.sh; tidying up"
fi
rm -f "$PID_FILE" "$STATE_DIR/url"
echo "mlflow-stop: stopped (log kept: $STATE_DIR/server.log)"
