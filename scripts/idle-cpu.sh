#!/usr/bin/env bash
# Idle CPU of a cluster: starts one on automatic ports in a temporary directory, waits until
# every instance is ready (`orch apply -d`), lets it settle, then samples utime + stime
# (/proc/PID/stat) of orch and of every child it reports over SECS seconds, and prints the
# share of one core each used: orch, the children, and the whole cluster.
#
#   scripts/idle-cpu.sh [SHAPE] [SECS]
#
# SHAPE: `cluster` (default: the 12 processes of manifests/cluster.yaml) or a number N (one
# registry, one balancer and N compute instances, the issue's growth shape). SECS: default 10.
# ORCH_BIN: the binary (default target/release/orch, else target/debug/orch).
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-cluster}
secs=${2:-10}
bin=${ORCH_BIN:-}
if [ -z "$bin" ]; then
    bin=target/release/orch
    [ -x "$bin" ] || bin=target/debug/orch
fi
bin=$(realpath "$bin")
dir=$(mktemp -d)
trap 'ORCH_CONTROL_TOKEN= "$bin" down -m "$dir/idle.yaml" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT

{
    printf 'apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: idle }\nspec:\n'
    printf '  dataDir: %s/data\n  controlPort: 0\n  services:\n' "$dir"
    printf '    - { name: registry, component: registry }\n'
    if [ "$shape" = cluster ]; then
        for s in auth data compute; do
            printf '    - { name: %s, component: %s, replicas: 3, dependsOn: [registry] }\n' "$s" "$s"
        done
        routes='{ /api/auth: auth, /api/data: data, /api/compute: compute }'
        printf '    - { name: balancer, component: balancer, dependsOn: [registry], routes: %s }\n' "$routes"
        printf '    - { name: detector, component: detector, dependsOn: [registry, balancer] }\n'
    else
        printf '    - { name: compute, component: compute, replicas: %d, dependsOn: [registry] }\n' "$shape"
        printf '    - { name: balancer, component: balancer, dependsOn: [registry], routes: { /api/compute: compute } }\n'
    fi
} >"$dir/idle.yaml"

t0=$(date +%s.%N)
"$bin" apply -d "$dir/idle.yaml" >/dev/null 2>&1
t1=$(date +%s.%N)
orch_pid=$(sed -n 's/.*"pid": *\([0-9]*\).*/\1/p' "$dir/data/orch.json" | head -1)
children=$("$bin" get -m "$dir/idle.yaml" -o json | tr ',{' '\n\n' | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
sleep 2 # settle: the first heartbeats and the startup probes are not idle

ticks() { # utime + stime of the pids given
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + $(echo "$stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)
# shellcheck disable=SC2086
o0=$(ticks "$orch_pid"); c0=$(ticks $children); s0=$(date +%s.%N)
sleep "$secs"
# shellcheck disable=SC2086
o1=$(ticks "$orch_pid"); c1=$(ticks $children); s1=$(date +%s.%N)
n=$(echo "$children" | wc -w)
# Compute instances that could not watch the WAL (no inotify instance left) poll instead.
polling=$( (grep -l "polling PRAGMA data_version instead" "$dir"/data/logs/compute-*.log 2>/dev/null || true) | wc -l)
[ "$polling" -eq 0 ] || echo "note: $polling compute instances poll PRAGMA data_version (no inotify watch: fs.inotify.max_user_instances)" >&2
awk -v o=$((o1 - o0)) -v c=$((c1 - c0)) -v hz="$hz" -v s0="$s0" -v s1="$s1" -v n="$n" -v start="$(echo "$t1 - $t0" | bc)" \
    -v shape="$shape" 'BEGIN {
        t = s1 - s0
        printf "%s: %d children, ready in %.2f s; idle CPU over %.1f s: orch %.2f %%, children %.2f %% (%.3f %% each), whole cluster %.2f %% of a core\n",
            shape, n, start, t, 100 * o / hz / t, 100 * c / hz / t, 100 * c / hz / t / n, 100 * (o + c) / hz / t
    }'
