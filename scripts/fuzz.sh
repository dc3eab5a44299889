#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of what a guest or the network feeds Quark, bounded per
# target. The targets are tests/fuzz/fuzz_targets/* (qkernel's syscall decoding and ELF loader,
# qnet's frame input and the stack side of the socket ring); each starts from its seed corpus
# in tests/fuzz/corpus/TARGET/, which it replays first. A crash stops the run and is saved as
# tests/fuzz/artifacts/TARGET/crash-*: copy it into the corpus once fixed, and every later run
# replays it as a test case.
#
# Usage: scripts/fuzz.sh [RUNS] [TARGET...]   (RUNS per target, default 100000; also capped
# at FUZZ_SECONDS per target, default 60). `cargo fuzz run -s none TARGET` in tests/ (with
# --fuzz-dir fuzz) runs the same targets open-ended.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100000}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(syscalls elf frames ring)
seconds=${FUZZ_SECONDS:-60}
triple=x86_64-unknown-linux-gnu

# What `cargo fuzz build --sanitizer none` passes (stable rustc): coverage counters and
# comparison tracing for libFuzzer, cfg(fuzzing) for the harness modules, and the checks a
# debug build has. The explicit --target keeps them off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --release --locked --manifest-path tests/fuzz/Cargo.toml --target "$triple" --bins

for t in "${targets[@]}"; do
    corpus=tests/fuzz/corpus/$t
    found=$(mktemp -d)
    mkdir -p "tests/fuzz/artifacts/$t" "$corpus"
    echo "fuzz: $t, $runs runs at most ($seconds s), seeds $(ls "$corpus" | wc -l)"
    # New inputs go to a scratch directory: the committed corpus only grows by hand.
    status=0
    "tests/fuzz/target/$triple/release/$t" -runs="$runs" -max_total_time="$seconds" \
        -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="tests/fuzz/artifacts/$t/" "$found" "$corpus" >"$found.log" 2>&1 ||
        status=$?
    grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::number_of_executed_units|ERROR|SUMMARY|panicked" \
        "$found.log" || true
    [ "$status" -eq 0 ] || tail -40 "$found.log" >&2
    rm -rf "$found" "$found.log"
    if [ "$status" -ne 0 ]; then
        echo "fuzz: $t FAILED (status $status); the input is in tests/fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz: every target ran clean"
