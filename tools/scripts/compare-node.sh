#!/usr/bin/env bash
# compare-node.sh: a single chainlog node on loopback next to its references, in one run, and
# the ratios BENCHMARKS.md asks for (rf=1 rows): fio O_DSYNC QD1 and a loopback round trip for
# c=1, Redis `appendfsync always` for c=64. Also counts syscalls per append at c=64 (strace -c).
# Peers come from ../shared/bench/peers.sh (it installs fio, redis, iperf3, jq as needed).
#
#   tools/scripts/compare-node.sh              # SECS=5 per measurement
set -euo pipefail
cd "$(dirname "$0")/../.."
PEERS=${PEERS:-../shared/bench/peers.sh}
SECS=${SECS:-5}
OUT=${OUT:-bench-out/node-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-17500}
[ -f "$PEERS" ] || { echo "peers script not found: $PEERS (set PEERS=...)" >&2; exit 2; }
command -v strace >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace >/dev/null; }
mkdir -p "$OUT"
cargo build --release -q -p chainlog -p chainlog-tools
DATA=$(mktemp -d)
NODE_PID=
stop_node() {
  # The node may run under strace: signal the node itself (the child), then its wrapper.
  if [ -n "$NODE_PID" ]; then
    pkill -TERM -P "$NODE_PID" 2>/dev/null || true
    kill -TERM "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
  fi
  NODE_PID=
}
trap 'stop_node; rm -rf "$DATA"' EXIT
start_node() {  # start_node [wrapper...]: one shard, so the c=64 figure is one core's
  rm -rf "$DATA"/*
  "$@" target/release/chainlog node --data-dir "$DATA" --listen 127.0.0.1:$PORT --shards 1 --metrics off \
    2> "$OUT/node.log" &
  NODE_PID=$!
  for _ in $(seq 1 100); do grep -q "shard serving" "$OUT/node.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "node did not start" >&2; cat "$OUT/node.log" >&2; exit 1
}
bench() {  # bench <name> <chainlog-bench append args...>
  local name=$1; shift
  target/release/chainlog-bench append --target 127.0.0.1:$PORT --duration "$SECS" --json "$OUT/$name.json" "$@" > "$OUT/$name.txt"
  echo "chainlog $name: $(jq -r '"\(.records_per_s|floor) records/s, p50/p90/p99/p99.9/max us = \(.latency_us.p50)/\(.latency_us.p90)/\(.latency_us.p99)/\(.latency_us.p999)/\(.latency_us.max)"' "$OUT/$name.json")"
}
SECS=$SECS bash "$PEERS" fio 2>&1 | tee "$OUT/peers-fio.txt" | grep SUMMARY
start_node
bench c1 --record-size 128 --concurrency 1
SECS=$SECS bash "$PEERS" redis 2>&1 | tee "$OUT/peers-redis.txt" | grep SUMMARY
bench c64 --record-size 128 --concurrency 64
stop_node
# Syscalls per append at c=64: strace every thread of the node for one run.
start_node strace -c -f -o "$OUT/strace.txt"
bench c64-strace --record-size 128 --concurrency 64
stop_node
# strace counts the whole run (start, warm-up, measurement); count the appends of all of it.
syscalls=$(awk '/ total$/ {print $4}' "$OUT/strace.txt")
appends=$(jq '.records + (.records_per_s * .config.warmup_s | floor)' "$OUT/c64-strace.json")

fio_dsync=$(grep 'seq4k_psync_odsync_qd1' "$OUT/peers-fio.txt" | grep -oE 'p50/p99/p99.9=[0-9]+' | cut -d= -f2)
rtt_ms=$(grep 'PING (loopback RTT floor, idle)' "$OUT/peers-redis.txt" | grep -oE 'p50/p99=[0-9.]+' | cut -d= -f2)
redis50=$(grep 'appendfsync=always c=50' "$OUT/peers-redis.txt")
redis_rps=$(grep -oE 'rps=[0-9]+' <<<"$redis50" | cut -d= -f2)
redis_p99_ms=$(grep -oE 'p50/p99/max=[0-9.]+/[0-9.]+' <<<"$redis50" | cut -d/ -f4)
c1_p50=$(jq .latency_us.p50 "$OUT/c1.json")
c64_rps=$(jq .records_per_s "$OUT/c64.json")
c64_p99=$(jq .latency_us.p99 "$OUT/c64.json")
{
  echo
  echo "ratios (same run, $SECS s each, 128 B records, one shard; raw output in $OUT)"
  awk -v a="$c1_p50" -v f="$fio_dsync" -v r="$rtt_ms" 'BEGIN{ref=f+r*1000; printf "  c=1 p50: chainlog %d us / (fio O_DSYNC 4 KiB QD1 p50 %d us + loopback RTT %d us) = %.2fx (target <= 1.2x): %s\n", a, f, r*1000, a/ref, (a/ref<=1.2?"met":"NOT met")}'
  awk -v a="$c64_rps" -v b="$redis_rps" -v p="$c64_p99" -v q="$redis_p99_ms" 'BEGIN{printf "  c=64: chainlog %d records/s, p99 %d us / redis appendfsync=always c=50 %d records/s, p99 %d us = %.2fx (target >= 2x, p99 no worse): %s\n", a, p, b, q*1000, a/b, ((a/b>=2 && p<=q*1000)?"met":"NOT met")}'
  awk -v s="$syscalls" -v a="$appends" 'BEGIN{printf "  syscalls per append at c=64 (strace -c -f, every node thread, whole run): %d / ~%d = %.3f\n", s, a, s/a}'
} | tee "$OUT/ratios.txt"
