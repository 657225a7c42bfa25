#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain, only when it is missing.
# Idempotent and quiet when everything is present. Each line of `need` is "COMMAND PACKAGE":
# the Debian PACKAGE is installed when COMMAND is not on the PATH.
set -euo pipefail

need=(
    # the dashboard's browser test (e2e/tests/dashboard.rs) drives Debian's headless Chromium
    "chromium chromium"
    "chromedriver chromium-driver"
    # manifests/examples/custom-command.yaml runs Python's http.server (checked by orch's tests)
    "python3 python3"
)

missing=()
for pair in "${need[@]}"; do
    read -r cmd pkg <<<"$pair"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# the PostgreSQL test pass (scripts/pg.sh, manifests/examples/postgres.yaml): Debian keeps the
# server's binaries off the PATH, in /usr/lib/postgresql/VERSION/bin
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: missing ${missing[*]} and no apt-get to install them; install them by hand" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "deps: missing ${missing[*]}; run as root (or with sudo) to install them" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
lock=(-o DPkg::Lock::Timeout=600)   # wait for another apt run instead of failing
"${sudo[@]}" apt-get "${lock[@]}" update -qq >/dev/null
"${sudo[@]}" apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
