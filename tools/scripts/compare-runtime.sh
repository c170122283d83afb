#!/usr/bin/env bash
# compare-runtime.sh: the shard's own io_uring loop against tokio-uring, same work, same client,
# same run (benches/runtime.rs; ARCHITECTURE.md section 12). Each run starts every server of a
# configuration at once and loads them in turn (ROUNDS slices of SLICE_MS each, alternating the
# order), so the shared machine's drifting load falls on all alike; RUNS runs show the spread.
# Prints each server's SUMMARY and the RATIO lines (server / tokio-uring) of every run.
#
#   tools/scripts/compare-runtime.sh          # RUNS=3 SLICE_MS=250 ROUNDS=20: ~1 min per run
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
SLICE_MS=${SLICE_MS:-250}
ROUNDS=${ROUNDS:-20}
OUT=${OUT:-bench-out/runtime-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
# Run the built binary itself, so that a rebuild (others' edits) never lands inside a run.
BIN=$(cargo bench --bench runtime --no-run 2>&1 | grep -oE 'target/release/deps/runtime-[0-9a-f]+' | tail -1)
[ -x "$BIN" ] || { echo "bench binary not found" >&2; exit 1; }
busy_pct() {  # CPU busy (all cores) over the next 3 s, from /proc/stat
  local a b
  read -ra a < /proc/stat; sleep 3; read -ra b < /proc/stat
  local total=0 idle=$(( b[4] + b[5] - a[4] - a[5] ))
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( 100 * (total - idle) / (total > 0 ? total : 1) ))
}
wait_quiet() {  # the machine is shared: wait (up to QUIET_WAIT_S) until others leave it idle
  local waited=0 busy
  while busy=$(busy_pct); [ "$busy" -gt "${QUIET_BUSY_PCT:-15}" ] && [ $waited -lt "${QUIET_WAIT_S:-300}" ]; do
    waited=$(( waited + 3 ))
  done
  echo "$busy"
}
for run in $(seq 1 "$RUNS"); do
  busy=$(wait_quiet)
  echo "run $run: CPU busy before ${busy}%, load $(cut -d' ' -f1-3 /proc/loadavg)"
  CHAINLOG_RUNTIME_SLICE_MS=$SLICE_MS CHAINLOG_RUNTIME_ROUNDS=$ROUNDS "$BIN" --bench > "$OUT/run$run.txt"
  echo "  load after: $(cut -d' ' -f1-3 /proc/loadavg)"
  grep -E '^(SUMMARY|RATIO)' "$OUT/run$run.txt" | sed 's/^/  /'
done
{
  echo
  echo "RATIO lines of every run, server / tokio-uring (raw output in $OUT):"
  for run in $(seq 1 "$RUNS"); do grep '^RATIO' "$OUT/run$run.txt" | sed "s/^RATIO/  run $run:/"; done | sort -s -k3,4
} | tee "$OUT/ratios.txt"
