#!/usr/bin/env bash
# Start a two-node Ray cluster on this machine: a head node and one worker node, each a
# `ray start --block` process in the background, bound to 127.0.0.1 with its own ports.
#
#   cluster/local/up.sh            # then: export RAY_ADDRESS=127.0.0.1:6390 RAY_AUTH_MODE=token
#   cluster/local/down.sh          # stops exactly the processes this script started
#
# The pid recorded for each node IS its `ray start --block` process: it owns the node's GCS,
# raylet, dashboard and agents, and takes them down when it gets SIGTERM. Nothing here uses
# the stop-everything CLI command (it would stop every Ray on the machine, a user's or another test's included).
#
# Every port is set explicitly (defaults below, all overridable), so this cluster can run next
# to a `ray.init()` embedded Ray or another cluster started with a different TUBELET_CLUSTER_PORT
# and TUBELET_CLUSTER_PORT_BASE.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

STATE_DIR="${TUBELET_CLUSTER_DIR:-$REPO/.cluster/local}"
RAY_BIN="${TUBELET_RAY:-}"
if [[ -z "$RAY_BIN" ]]; then
    if [[ -x "$REPO/.venv/bin/ray" ]]; then RAY_BIN="$REPO/.venv/bin/ray"; else RAY_BIN="$(command -v ray || true)"; fi
fi
HEAD_PORT="${TUBELET_CLUSTER_PORT:-6390}"              # GCS: what RAY_ADDRESS points to
DASHBOARD_PORT="${TUBELET_CLUSTER_DASHBOARD_PORT:-8275}" # dashboard + Jobs API (ray job submit)
PORT_BASE="${TUBELET_CLUSTER_PORT_BASE:-23400}"         # base+0..9 head, base+10..19 worker node,
                                                       # base+100..199 / base+200..299 worker processes
HEAD_CPUS="${TUBELET_CLUSTER_HEAD_CPUS:-2}"             # logical CPUs; may exceed the physical ones
WORKER_CPUS="${TUBELET_CLUSTER_WORKER_CPUS:-2}"
OBJECT_STORE_BYTES="${TUBELET_CLUSTER_OBJECT_STORE_BYTES:-200000000}"  # per node; tiny machine
# Short on purpose: Ray puts unix sockets under it (108-character limit). Its own root keeps this
# cluster's session files, logs and `ray_current_cluster` apart from /tmp/ray.
RAY_TMP="${TUBELET_CLUSTER_TMP:-/tmp/tubelet-ray-$HEAD_PORT}"
TIMEOUT_S="${TUBELET_CLUSTER_TIMEOUT_S:-120}"
ADDRESS="127.0.0.1:$HEAD_PORT"

die() { echo "cluster-up: $*" >&2; exit 1; }

[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || die "no 'ray' executable (run 'make setup' or set TUBELET_RAY)"
PY="$(dirname "$RAY_BIN")/python"; [[ -x "$PY" ]] || PY="$(command -v python3)"
# The entrypoint of a submitted job (`python -m jobs.X`) runs with the nodes' PATH: the
# environment that holds this ray (and the project) must come first in it.
export PATH="$(cd "$(dirname "$RAY_BIN")" && pwd):$PATH"  # absolute: jobs run in other directories

if [[ -f "$STATE_DIR/head.pid" ]] && kill -0 "$(cat "$STATE_DIR/head.pid")" 2>/dev/null; then
    die "a cluster is already running from $STATE_DIR (RAY_ADDRESS=$(cat "$STATE_DIR/address" 2>/dev/null)); run cluster/local/down.sh first"
fi
"$PY" - "$HEAD_PORT" "$DASHBOARD_PORT" <<'EOF' || die "port in use (set TUBELET_CLUSTER_PORT / TUBELET_CLUSTER_DASHBOARD_PORT / TUBELET_CLUSTER_PORT_BASE)"
import socket, sys
for port in map(int, sys.argv[1:]):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            print(f"cluster-up: 127.0.0.1:{port} is already in use", file=sys.stderr)
            sys.exit(1)
EOF

# Token authentication (Ray >= 2.5x): `ray start --head` turns it on when RAY_AUTH_MODE is unset
# and a token exists (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); a joining node
# and the CLI only use it when RAY_AUTH_MODE=token. Make it explicit for both nodes, and create
# the token once if this machine has none. A driver (`ray.init(address=...)`) on this machine
# then authenticates with the same token file. RAY_AUTH_MODE=disabled opts out.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" == "token" ]]; then
    "$RAY_BIN" get-auth-token --generate >/dev/null 2>&1 || die "could not create a Ray auth token (ray get-auth-token --generate)"
fi

mkdir -p "$STATE_DIR" "$RAY_TMP"
rm -f "$STATE_DIR"/*.pid
echo "$ADDRESS" > "$STATE_DIR/address"

common=(--node-ip-address 127.0.0.1 --disable-usage-stats --block
        --object-store-memory "$OBJECT_STORE_BYTES" --log-style record)
# Each node gets its own temp dir, as on separate machines. With one shared dir both nodes share
# one session dir, so one runtime_resources/working_dir_files: a node that sets up a job's
# working dir after the other (a Ray Train worker placed on the second node) re-extracts it with
# overwrite, deleting it under the driver running in it ("getcwd() failed", libraries not found).
mkdir -p "$RAY_TMP/head" "$RAY_TMP/worker"

# `setsid` gives each node its own process group, so a Ctrl-C in this shell does not reach it.
setsid "$RAY_BIN" start --head --port "$HEAD_PORT" --num-cpus "$HEAD_CPUS" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port $((PORT_BASE + 0)) \
    --node-manager-port $((PORT_BASE + 1)) --object-manager-port $((PORT_BASE + 2)) \
    --runtime-env-agent-port $((PORT_BASE + 3)) --dashboard-agent-grpc-port $((PORT_BASE + 4)) \
    --dashboard-agent-listen-port $((PORT_BASE + 5)) --metrics-export-port $((PORT_BASE + 6)) \
    --min-worker-port $((PORT_BASE + 100)) --max-worker-port $((PORT_BASE + 199)) \
    --temp-dir "$RAY_TMP/head" "${common[@]}" >"$STATE_DIR/head.log" 2>&1 </dev/null &
echo $! > "$STATE_DIR/head.pid"

wait_for() {  # wait_for <alive nodes> : poll the GCS until that many nodes are alive
    "$PY" - "$ADDRESS" "$1" "$TIMEOUT_S" "$STATE_DIR" <<'EOF'
import os, sys, time
address, want, timeout, state = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
from ray._raylet import GcsClient
deadline, alive, error = time.monotonic() + timeout, 0, ""
while time.monotonic() < deadline:
    for name in ("head", "worker"):
        path = os.path.join(state, f"{name}.pid")
        if os.path.exists(path):
            pid = int(open(path).read())
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                sys.exit(f"cluster-up: the {name} node exited; see {state}/{name}.log")
    try:
        nodes = GcsClient(address=address).get_all_node_info(timeout=5)
        alive = sum(1 for n in nodes.values() if n.state == 0)  # GcsNodeInfo.ALIVE
        if alive >= want:
            sys.exit(0)
    except Exception as e:  # GCS not up yet
        error = str(e).splitlines()[0] if str(e) else type(e).__name__
    time.sleep(1)
sys.exit(f"cluster-up: {alive}/{want} nodes alive after {timeout:.0f} s ({error}); see {state}/*.log")
EOF
}

fail() { echo "$1" >&2; "$HERE/down.sh" >/dev/null 2>&1 || true; exit 1; }

wait_for 1 || fail "cluster-up: the head node did not come up"

setsid "$RAY_BIN" start --address "$ADDRESS" --num-cpus "$WORKER_CPUS" \
    --node-manager-port $((PORT_BASE + 11)) --object-manager-port $((PORT_BASE + 12)) \
    --runtime-env-agent-port $((PORT_BASE + 13)) --dashboard-agent-grpc-port $((PORT_BASE + 14)) \
    --dashboard-agent-listen-port $((PORT_BASE + 15)) --metrics-export-port $((PORT_BASE + 16)) \
    --min-worker-port $((PORT_BASE + 200)) --max-worker-port $((PORT_BASE + 299)) \
    --temp-dir "$RAY_TMP/worker" "${common[@]}" >"$STATE_DIR/worker.log" 2>&1 </dev/null &
echo $! > "$STATE_DIR/worker.pid"

wait_for 2 || fail "cluster-up: the worker node did not join"

cat > "$STATE_DIR/env" <<EOF
export RAY_ADDRESS=$ADDRESS
export RAY_AUTH_MODE=$RAY_AUTH_MODE
EOF
echo "cluster-up: 2 nodes alive (head pid $(cat "$STATE_DIR/head.pid"), worker pid $(cat "$STATE_DIR/worker.pid")); dashboard http://127.0.0.1:$DASHBOARD_PORT"
echo "export RAY_ADDRESS=$ADDRESS RAY_AUTH_MODE=$RAY_AUTH_MODE"
