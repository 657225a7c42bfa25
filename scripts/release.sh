#!/usr/bin/env bash
# `make release`: the optimised `orch` binary at target/release/orch.
#
# On Linux with glibc it is linked statically (crt-static): the 13 processes of a cluster
# all run this one binary, and a shared libc is mapped, and counted in RSS, by each of them
# (about 2 MB apiece); a static one brings only the parts orch uses. A static build must
# name its target (so that build scripts and proc-macros stay dynamic), which puts it under
# target/<host>/release; it is copied to target/release/orch, where everything expects it.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
    *-linux-gnu)
        RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
            cargo build --release --target "$host" -p orch "$@"
        mkdir -p target/release
        cp -f "target/$host/release/orch" target/release/orch.new
        mv -f target/release/orch.new target/release/orch
        ;;
    *)
        cargo build --release -p orch "$@"
        ;;
esac
