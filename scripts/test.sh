#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, checks formatting and lints, runs
# every test (unit, property and end-to-end against kernel peers in namespaces and real KVM),
# fuzzes the guest- and network-facing parsers for a bounded time, and closes with one summary
# line of the counts over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --packages-only
# A clean build gains nothing from incremental state, which doubles the debug target's size.
export CARGO_INCREMENTAL=0
echo "test: free disk before building: $(df -h --output=avail . | tail -1)"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# The dynamically linked guests again with syscall-site patching turned off host-wide, so each
# passes both ways (docs/qvisor.md). Only shared libraries are ever patched: the other suites
# run static programs, for which on and off are the same run; the patching tests run each of
# their cases both ways themselves.
QUARK_SYSCALL_PATCHING=off cargo test -p qvisor --no-fail-fast --test debian 2>&1 |
    tee -a "$log" || status=$?
# Coverage-guided fuzzing (libFuzzer) of what a guest or the network feeds Quark, bounded:
# 30,000 runs or 15 s per target, from the seed corpora (scripts/fuzz.sh).
FUZZ_SECONDS=15 bash scripts/fuzz.sh 30000 || status=$?
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
echo "test: free disk after the suite: $(df -h --output=avail . | tail -1)"
exit "$status"
