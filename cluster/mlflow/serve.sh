#!/usr/bin/env bash
# Start an MLflow tracking server in the background and record its pid; stop.sh stops exactly it.
#
#   cluster/mlflow/serve.sh     # then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   cluster/mlflow/stop.sh
#
# Backend: the same SQLite file the embedded default writes (runs/mlflow.db), so the UI shows what
# `make demo` logged. Artifacts of new experiments go through the server (--serve-artifacts, the
# default) to a local folder or an s3:// prefix: clients, Ray workers included, need no S3 keys.
# (Experiments first created by the embedded store keep their file:// artifact folder; give
# cluster runs their own experiment, tracking.experiment=..., so their artifacts go through here.)
#
# `mlflow server` runs uvicorn, which forks worker processes. The recorded pid is the `mlflow`
# process started under `setsid`: it leads a new process group holding all of them, and stop.sh
# signals that group by its pid. Bound to 127.0.0.1 unless TUBELET_MLFLOW_HOST says otherwise.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

STATE_DIR="${TUBELET_MLFLOW_DIR:-$REPO/.cluster/mlflow}"          # pid, url, server.log
HOST="${TUBELET_MLFLOW_HOST:-127.0.0.1}"
PORT="${TUBELET_MLFLOW_PORT:-5000}"
BACKEND="${TUBELET_MLFLOW_BACKEND:-sqlite:///$REPO/runs/mlflow.db}"
ARTIFACTS="${TUBELET_MLFLOW_ARTIFACTS:-$REPO/runs/mlflow-artifacts}"  # a folder or s3://bucket/prefix
WORKERS="${TUBELET_MLFLOW_WORKERS:-2}"
ALLOWED_HOSTS="${TUBELET_MLFLOW_ALLOWED_HOSTS:-}"                # needed when reached by a DNS name
# MLflow's background job runner (huey consumers: GenAI evaluation jobs, trace roll-ups) is seven
# more processes that experiment tracking does not use; on by request only.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${TUBELET_MLFLOW_JOB_EXECUTION:-false}"
TIMEOUT_S="${TUBELET_MLFLOW_TIMEOUT_S:-120}"
MLFLOW_BIN="${TUBELET_MLFLOW:-}"
if [[ -z "$MLFLOW_BIN" ]]; then
    if [[ -x "$REPO/.venv/bin/mlflow" ]]; then MLFLOW_BIN="$REPO/.venv/bin/mlflow"; else MLFLOW_BIN="$(command -v mlflow || true)"; fi
fi

die() { echo "mlflow-serve: $*" >&2; exit 1; }

[[ -n "$MLFLOW_BIN" && -x "$MLFLOW_BIN" ]] || die "no 'mlflow' executable (run 'make setup' or set TUBELET_MLFLOW)"
PY="$(dirname "$MLFLOW_BIN")/python"; [[ -x "$PY" ]] || PY="$(command -v python3)"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "TUBELET_MLFLOW_PORT=$PORT is not a port number"

if [[ -f "$STATE_DIR/server.pid" ]] && kill -0 "$(cat "$STATE_DIR/server.pid")" 2>/dev/null; then
    die "a server is already running from $STATE_DIR ($(cat "$STATE_DIR/url" 2>/dev/null)); run cluster/mlflow/stop.sh first"
fi
PROBE_HOST="$HOST"; [[ "$HOST" == "0.0.0.0" || "$HOST" == "::" ]] && PROBE_HOST=127.0.0.1
"$PY" - "$PROBE_HOST" "$PORT" <<'PYEOF' || die "$PROBE_HOST:$PORT is already in use (set TUBELET_MLFLOW_PORT / MLFLOW_PORT)"
import socket, sys
with socket.socket() as s:
    sys.exit(1 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 0)
PYEOF

if [[ "$BACKEND" == sqlite:///* ]]; then mkdir -p "$(dirname "${BACKEND#sqlite:///}")"; fi
if [[ "$ARTIFACTS" != *://* ]]; then mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"; fi
mkdir -p "$STATE_DIR"
rm -f "$STATE_DIR/server.pid" "$STATE_DIR/url"

args=(server --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS"
      --host "$HOST" --port "$PORT" --workers "$WORKERS")
[[ -n "$ALLOWED_HOSTS" ]] && args+=(--allowed-hosts "$ALLOWED_HOSTS")

# setsid: a new session and process group led by this pid (not a fork: a background command of a
# non-interactive shell is not a group leader), so the server and its workers are one group.
setsid "$MLFLOW_BIN" "${args[@]}" >"$STATE_DIR/server.log" 2>&1 </dev/null &
PID=$!
echo "$PID" > "$STATE_DIR/server.pid"
URL="http://$PROBE_HOST:$PORT"

if ! "$PY" - "$URL/health" "$PID" "$TIMEOUT_S" <<'PYEOF'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("mlflow-serve: the server exited")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"mlflow-serve: no answer from {url} after {timeout:.0f} s")
PYEOF
then
    tail -n 20 "$STATE_DIR/server.log" >&2 || true
    TUBELET_MLFLOW_DIR="$STATE_DIR" "$HERE/stop.sh" >/dev/null 2>&1 || true
    die "the server did not start; log: $STATE_DIR/server.log"
fi

echo "$URL" > "$STATE_DIR/url"
echo "mlflow-serve: pid $PID serving $BACKEND (artifacts: $ARTIFACTS) at $URL; log $STATE_DIR/server.log"
echo "export MLFLOW_TRACKING_URI=$URL"
