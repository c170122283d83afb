#!/usr/bin/env bash
# run.sh [SECONDS]: builds the fuzz targets (cargo fuzz, no sanitizer, optimized, with debug
# assertions so that an overflow is a crash) and runs each for SECONDS (default 20) from the
# committed seeds (seeds/TARGET, made by `cargo run --example seed_corpus seeds`) and what
# earlier runs kept (corpus/TARGET). Stops at the first crash: its input is in
# artifacts/TARGET/, and `cargo fuzz run --sanitizer none -O -a TARGET FILE` replays it.
# Needs cargo-fuzz (tools/scripts/install-test-deps.sh installs it).
#
#   tools/fuzz/run.sh 20      # CI: a short run of each target
#   tools/fuzz/run.sh 3600    # offline: an hour of each
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
flags=(--sanitizer none -O -a)
cargo fuzz build "${flags[@]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    echo "== fuzz target $target: $seconds s"
    if ! cargo fuzz run "${flags[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $target crashed: its input is in tools/fuzz/artifacts/$target"
        exit 1
    fi
    grep -E "DONE|^Done" "$log"
done
