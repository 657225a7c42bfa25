#!/usr/bin/env bash
# `make bench`: builds the release orch binary, installs nginx and wrk when missing, and runs
# the cluster benchmark (e2e/benches/cluster.rs): every figure that matters measured in one
# run on the full 12-process cluster, ending with one table (also target/bench/summary.json
# and target/bench/summary.md).
#
# `scripts/bench.sh --all` (`make bench-all`): first every crate's own benchmark
# (crates/*/benches/*.rs, each printing its table), then the same cluster benchmark.
#
# BENCH_SECS (default 5) sets the length of each load run. BENCH_ONLY runs only the named
# steps of the cluster benchmark, comma-separated (coldstart, memory, nginx, matrix: the
# balancer's load shapes against nginx and HAProxy, load, afterload, pickup: job pickup
# latency, durability, scale, kills, dashboard, hangs, slowloris, checker, growth: cold start,
# idle CPU and PSS at 12 processes and at N = 10, 100 compute instances (1000 too with
# BENCH_GROWTH_1000=1), each on a cluster of its own, autoscale and rollback: each on a small
# cluster of its own, postgres: the load rows and pickup again on a second cluster on
# PostgreSQL): `BENCH_ONLY=durability,slowloris make bench`.
set -euo pipefail
cd "$(dirname "$0")/.."

all=false
case "${1:-}" in
    --all) all=true ;;
    "") ;;
    *) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac

# nginx and HAProxy (the balancer's yardsticks) and wrk (the load generator), from apt when missing.
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || missing+=(nginx)
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || missing+=(haproxy)   # the matrix step
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)   # the postgres step
if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "bench: missing ${missing[*]} and no apt-get to install them; install them by hand" >&2
        exit 1
    fi
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "bench: missing ${missing[*]}; run as root (or with sudo) to install them" >&2; exit 1; }
        sudo=(sudo)
    fi
    echo "bench: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    lock=(-o DPkg::Lock::Timeout=600)
    "${sudo[@]}" apt-get "${lock[@]}" update -qq >/dev/null
    "${sudo[@]}" apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== building the release orch binary" >&2
./scripts/release.sh --quiet

if $all; then
    for file in crates/*/benches/*.rs; do
        crate=$(basename "$(dirname "$(dirname "$file")")")
        bench=$(basename "$file" .rs)
        echo "== $crate / $bench" >&2
        cargo bench --quiet -p "$crate" --bench "$bench"
    done
fi

echo "== building the cluster benchmark" >&2
ORCH_BIN="$PWD/target/release/orch" cargo bench --quiet -p e2e --bench cluster
