#!/usr/bin/env bash
# Builds the fuzz targets and runs each for FUZZ_SECONDS (default 60). Fails on the first crash,
# leak, timeout or out-of-memory, leaving the input in fuzz/artifacts/<target>/.
#
#   fuzz/run-ci.sh                       # every target, 60 s each
#   FUZZ_SECONDS=300 fuzz/run-ci.sh      # longer
#   fuzz/run-ci.sh ops_vs_reference      # some targets only
#
# Environment: FUZZ_SECONDS, FUZZ_TOOLCHAIN (default nightly-2026-05-20), FUZZ_JOBS (parallel
# jobs per target, default 1).
set -euo pipefail

cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-nightly-2026-05-20}"
jobs="${FUZZ_JOBS:-1}"

if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "run-ci.sh: needs cargo-fuzz and the $toolchain toolchain:" >&2
    echo "  rustup toolchain install $toolchain && cargo install cargo-fuzz" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

# Debug assertions on (the cargo-fuzz default): overflow checks catch wrapping arithmetic.
cargo "+$toolchain" fuzz build --debug-assertions

# -jobs makes libFuzzer run workers as child processes logging to fuzz-N.log; only ask for it
# when there is more than one.
parallel=()
if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
fi

status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "=== $target: ${seconds}s"
    # The committed seeds are in corpus/<target>/ (seed-*); new inputs land there too but are
    # not committed (.gitignore).
    if ! cargo "+$toolchain" fuzz run --debug-assertions "$target" "corpus/$target" -- \
        -max_total_time="$seconds" "${parallel[@]}" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1; then
        echo "=== $target: FAILED; reproduce with:" >&2
        for a in artifacts/"$target"/*; do
            [ -e "$a" ] || continue
            echo "  cargo +$toolchain fuzz run $target $PWD/$a" >&2
        done
        status=1
    fi
done
exit "$status"
