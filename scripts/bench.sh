#!/usr/bin/env bash
# Runs every benchmark (each crate's benches/*.rs, harness = false) in release mode; each
# prints a readable table.
set -euo pipefail
cd "$(dirname "$0")/.."
for file in crates/*/benches/*.rs e2e/benches/*.rs; do
  [ -e "$file" ] || continue
  crate=$(basename "$(dirname "$(dirname "$file")")")
  bench=$(basename "$file" .rs)
  echo "== $crate / $bench"
  cargo bench --quiet -p "$crate" --bench "$bench"
done
