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
    # the export's test that secrets never reach a terminal runs it on a pseudo-terminal
    # (crates/orch/tests/it/export.rs) with util-linux's `script` (Debian: bsdutils)
    "script bsdutils"
    # make bench's balancer matrix (e2e/benches/cluster/matrix.rs) sets HAProxy beside nginx
    "haproxy haproxy"
    # manifests/examples/observability.yaml runs a real Prometheus (e2e/tests/observability.rs)
    "prometheus prometheus"
)

# The Kubernetes export's schema check (crates/orch/src/export/tests.rs) runs the PyPI
# package kubernetes-validate, which bundles the OpenAPI schemas (offline), from a virtual
# environment under target/.
k8s_validate_version=1.37.0
k8s_venv="$(dirname "$0")/../target/k8s-validate"
k8s_validate_install() {
    if ! "$k8s_venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qF "$k8s_validate_version"; then
        echo "deps: installing kubernetes-validate $k8s_validate_version into target/k8s-validate" >&2
        python3 -m venv "$k8s_venv"
        "$k8s_venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$k8s_validate_version"
    fi
}

missing=()
for pair in "${need[@]}"; do
    read -r cmd pkg <<<"$pair"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# the PostgreSQL test pass (scripts/pg.sh, manifests/examples/postgres.yaml): Debian keeps the
# server's binaries off the PATH, in /usr/lib/postgresql/VERSION/bin
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
# Debian's python3 makes virtual environments only with python3-venv (ensurepip).
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ ${#missing[@]} -eq 0 ]; then
    k8s_validate_install
    exit 0
fi

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
# Debian's prometheus package starts its own service on :9090; orch runs Prometheus itself
# (manifests/examples/observability.yaml, scripts/prometheus-serve.sh), so that one is stopped.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
k8s_validate_install
