#!/usr/bin/env bash
# Runs Prometheus in the foreground for orch (`command:` of
# manifests/examples/observability.yaml): `prometheus-serve.sh CONFIG DIR PORT`.
# CONFIG is a prometheus.yml in which ${SERVICE_REGISTRY} and ${ORCH_CONTROL} stand for the
# registry's and orch's control API's host:port; they are filled in from the
# SERVICE_REGISTRY_URL and ORCH_CONTROL_URL orch gives every instance, into DIR/prometheus.yml
# (Prometheus expands no variables in its configuration). Then it execs Prometheus on
# 127.0.0.1:PORT with its time series in DIR/tsdb, so orch's signals reach it. Debian's
# systemd service is not used: orch is what runs it.
set -euo pipefail

config=${1:?usage: prometheus-serve.sh CONFIG DIR PORT}
dir=${2:?usage: prometheus-serve.sh CONFIG DIR PORT}
port=${3:?usage: prometheus-serve.sh CONFIG DIR PORT}
command -v prometheus >/dev/null \
    || { echo "prometheus-serve.sh: no prometheus on the PATH (make deps installs Debian's prometheus)" >&2; exit 1; }

# http://localhost:3005/ -> 127.0.0.1:3005 (the instances listen on 127.0.0.1)
host_port() {
    local url=${1#http://}
    url=${url%%/*}
    echo "${url/localhost/127.0.0.1}"
}
registry=$(host_port "${SERVICE_REGISTRY_URL:?prometheus-serve.sh: SERVICE_REGISTRY_URL unset (run by orch)}")
control=$(host_port "${ORCH_CONTROL_URL:?prometheus-serve.sh: ORCH_CONTROL_URL unset (run by orch)}")

mkdir -p "$dir"
sed -e "s|\${SERVICE_REGISTRY}|$registry|g" -e "s|\${ORCH_CONTROL}|$control|g" "$config" >"$dir/prometheus.yml.tmp"
mv "$dir/prometheus.yml.tmp" "$dir/prometheus.yml"
exec prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
    --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$port"
