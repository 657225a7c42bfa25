#!/usr/bin/env bash
# A private PostgreSQL server for the tests: `start` (initdb into a temporary dir on first
# start, then the server on a free loopback port, fsync off), `url` (prints the URL tests
# create their databases through: ORCH_TEST_DATABASE_URL), `stop` (stops it and removes the
# dir). Idempotent: starting a running server or stopping a stopped one does nothing.
# The dir is ORCH_PG_DIR, else one per checkout under TMPDIR; as root, the server runs as
# Debian's `postgres` user (initdb refuses root), else as the current user.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${ORCH_PG_DIR:-${TMPDIR:-/tmp}/orch-pg-$(printf %s "$root" | cksum | cut -d' ' -f1)}
bin=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -n1 || true)
[ -n "$bin" ] || { echo "pg.sh: no PostgreSQL server installed (make deps installs Debian's postgresql)" >&2; exit 1; }

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

running() {
    [ -f "$dir/port" ] && as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

url() {
    local user
    user=$([ "$(id -u)" -eq 0 ] && echo postgres || id -un)
    echo "postgres://$user@127.0.0.1:$(cat "$dir/port")/postgres"
}

case "${1:-}" in
start)
    running && exit 0
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir" && chmod 700 "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -A trust -U "$([ "$(id -u)" -eq 0 ] && echo postgres || id -un)" \
            --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB" start >/dev/null \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    ;;
url)
    running || { echo "pg.sh: not running (scripts/pg.sh start)" >&2; exit 1; }
    url
    ;;
stop)
    if running; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: scripts/pg.sh start|stop|url" >&2
    exit 2
    ;;
esac
