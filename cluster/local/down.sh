#!/usr/bin/env bash
# Stop the local cluster started by cluster/local/up.sh, and only that: the `ray start --block`
# processes whose pids up.sh recorded, and what they started (GCS, raylet, dashboard, agents,
# worker processes). SIGTERM first, so each node shuts its children down itself; after
# TUBELET_CLUSTER_STOP_TIMEOUT_S (default 30) SIGKILL for anything of theirs still alive.
# Then the state dir goes. Idempotent: with nothing recorded, or everything already gone, it
# only tidies up. Never the stop-everything CLI command: it would stop every Ray on the machine.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE_DIR="${TUBELET_CLUSTER_DIR:-$REPO/.cluster/local}"
TIMEOUT_S="${TUBELET_CLUSTER_STOP_TIMEOUT_S:-30}"

if [[ ! -d "$STATE_DIR" ]]; then
    echo "cluster-down: nothing recorded in $STATE_DIR"
    exit 0
fi

is_ours() {  # the pid is still the `ray start ... --block` that up.sh launched (not a reused pid)
    local cmd
    cmd="$(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" == *" start "*"--block"* ]]
}

descendants() {  # every process below pid $1, collected now, before anything exits
    local children child
    children="$(ps -o pid= --ppid "$1" 2>/dev/null)" || return 0
    for child in $children; do
        echo "$child"
        descendants "$child"
    done
}

nodes=() tree=()
for name in worker head; do  # worker first, so the head does not see a node die under it
    file="$STATE_DIR/$name.pid"
    [[ -f "$file" ]] || continue
    pid="$(cat "$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then
        nodes+=("$pid")
        mapfile -t -O "${#tree[@]}" tree < <(descendants "$pid")
    fi
done

for pid in "${nodes[@]}"; do
    kill -TERM "$pid" 2>/dev/null && echo "cluster-down: SIGTERM to node process $pid"
done

alive() {  # running pids among "$@" (a zombie has exited: it only waits for its parent to reap it)
    local p state
    for p in "$@"; do
        state="$(ps -o stat= -p "$p" 2>/dev/null)" || continue
        [[ "$state" == Z* ]] || echo "$p"
    done
}

deadline=$((SECONDS + TIMEOUT_S))
while (( SECONDS < deadline )); do
    [[ -z "$(alive "${nodes[@]}" "${tree[@]}")" ]] && break
    sleep 0.5
done

left="$(alive "${nodes[@]}" "${tree[@]}")"
if [[ -n "$left" ]]; then
    echo "cluster-down: SIGKILL to what is left after ${TIMEOUT_S} s:" $left
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null
    sleep 1
fi

rm -rf "$STATE_DIR"
echo "cluster-down: stopped (${#nodes[@]} node processes, ${#tree[@]} children); removed $STATE_DIR"
