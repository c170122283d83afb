#!/usr/bin/env bash
# compare-storage.sh: the storage engine next to its references, in one run, and the ratios
# that BENCHMARKS.md asks for (storage rows). Peers come from ../shared/bench/peers.sh, which
# installs what it needs (fio, jq, a raft-engine load generator).
#
#   tools/scripts/compare-storage.sh            # SECS=5 per measurement
#   SECS=10 OUT=bench-out/run1 tools/scripts/compare-storage.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=${PEERS:-../shared/bench/peers.sh}
SECS=${SECS:-5}
OUT=${OUT:-bench-out/storage-$(date +%Y%m%d-%H%M%S)}
[ -f "$PEERS" ] || { echo "peers script not found: $PEERS (set PEERS=...)" >&2; exit 2; }
mkdir -p "$OUT"
cargo build --release -q -p chainlog-tools
bench() {  # bench <name> <chainlog-bench storage args...>
  local name=$1; shift
  target/release/chainlog-bench storage --duration "$SECS" --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  echo "chainlog $name: $(jq -r '"\(.records_per_s|floor) records/s, \(.bytes_per_s/1048576*100|floor/100) MiB/s, p50/p90/p99/p99.9/max us = \(.latency_us.p50)/\(.latency_us.p90)/\(.latency_us.p99)/\(.latency_us.p999)/\(.latency_us.max), durability \(.durability)"' "$OUT/$name.json")"
}
# Interleaved: each chainlog workload runs right after its reference.
SECS=$SECS bash "$PEERS" fio 2>&1 | tee "$OUT/peers-fio.txt" | grep SUMMARY
bench c1 --record-size 128 --concurrency 1
SECS=$SECS bash "$PEERS" raft 2>&1 | tee "$OUT/peers-raft.txt" | grep SUMMARY
bench c16 --record-size 128 --concurrency 16
bench c16-64k --record-size 65536 --concurrency 16

num() { grep -oE "$2=[0-9.]+" <<<"$1" | head -1 | cut -d= -f2; }
fio_dsync=$(grep 'seq4k_psync_odsync_qd1' "$OUT/peers-fio.txt" | grep -oE 'p50/p99/p99.9=[0-9]+' | cut -d= -f2)
fio_64k=$(num "$(grep 'seq64k_psync_fdatasync_qd1' "$OUT/peers-fio.txt")" 'MiB/s')
raft16=$(grep 'conc=16' "$OUT/peers-raft.txt" | grep SUMMARY)
raft16_rate=$(num "$raft16" ops_per_s)
raft16_p99=$(num "$raft16" p99_us)
c1_p50=$(jq .latency_us.p50 "$OUT/c1.json")
c16_rate=$(jq .records_per_s "$OUT/c16.json")
c16_p99=$(jq .latency_us.p99 "$OUT/c16.json")
big_mib=$(jq '.bytes_per_s/1048576' "$OUT/c16-64k.json")
{
  echo
  echo "ratios (same run, $SECS s each; raw output in $OUT)"
  awk -v a="$c1_p50" -v b="$fio_dsync" 'BEGIN{printf "  128 B c=1 p50: chainlog %d us / fio O_DSYNC 4 KiB QD1 p50 %d us = %.2fx (target <= 1.2x): %s\n", a, b, a/b, (a/b<=1.2?"met":"NOT met")}'
  awk -v a="$c16_rate" -v b="$raft16_rate" -v p="$c16_p99" -v q="$raft16_p99" 'BEGIN{printf "  128 B c=16: chainlog %d records/s / raft-engine %d = %.2fx (target >= 2x); p99 %d us vs %d us: %s\n", a, b, a/b, p, q, ((a/b>=2 && p<q)?"met":"NOT met")}'
  awk -v a="$big_mib" -v b="$fio_64k" 'BEGIN{printf "  64 KiB c=16: chainlog %.0f MiB/s / fio 64 KiB + fdatasync QD1 %.0f MiB/s = %.2fx (target >= 1x): %s\n", a, b, a/b, (a>=b?"met":"NOT met")}'
} | tee "$OUT/ratios.txt"
