#!/usr/bin/env bash
# Runs a PostgreSQL server in the foreground for orch (`command:` of
# manifests/examples/postgres.yaml): `pg-serve.sh DIR PORT [USER [DATABASE]]`.
# On first start it initdb's DIR (superuser USER, default `orch`, trusting loopback
# connections) and creates DATABASE (default `orch`); then it execs `postgres -D DIR -k DIR`
# on 127.0.0.1:PORT, so orch's signals reach the server itself. As root, the server runs as
# Debian's `postgres` user (PostgreSQL refuses root), and a directory above DIR that this
# user could not pass through (a private temporary dir, say) gets the search bit for others
# (o+x: passing through, not listing).
set -euo pipefail

dir=${1:?usage: pg-serve.sh DIR PORT [USER [DATABASE]]}
port=${2:?usage: pg-serve.sh DIR PORT [USER [DATABASE]]}
user=${3:-orch}
database=${4:-orch}
bin=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -n1 || true)
[ -n "$bin" ] || { echo "pg-serve.sh: no PostgreSQL server installed (make deps installs Debian's postgresql)" >&2; exit 1; }
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)

as_owner=()
if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
    as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups --)
    up=$(dirname "$dir")
    while [ "$up" != / ]; do
        "${as_owner[@]}" test -x "$up" || chmod o+x "$up"
        up=$(dirname "$up")
    done
fi
chmod 700 "$dir"

if [ ! -f "$dir/PG_VERSION" ]; then
    "${as_owner[@]}" "$bin/initdb" -D "$dir" -U "$user" -A trust -E UTF8 --locale=C >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log" >&2; exit 1; }
    echo "CREATE DATABASE $database;" | "${as_owner[@]}" "$bin/postgres" --single -D "$dir" -j postgres >/dev/null
fi
exec "${as_owner[@]}" "$bin/postgres" -D "$dir" -k "$dir" -p "$port" -c listen_addresses=127.0.0.1 \
    -c max_connections=200
