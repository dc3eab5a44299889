#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, checks formatting and lints, runs
# every test (unit, property and end-to-end against kernel peers in namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
