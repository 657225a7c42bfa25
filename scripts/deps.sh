#!/usr/bin/env bash
# Installs what the test suites need beyond the Rust toolchain, only when it is missing.
# Nothing is needed yet beyond Rust; later suites add their packages here.
set -euo pipefail
