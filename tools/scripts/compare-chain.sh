#!/usr/bin/env bash
# compare-chain.sh: chain replication against a single replica, in one run (BENCHMARKS.md's
# rf=3 row): a dev cluster of 3 nodes (each one shard, all on this machine's one disk) with
# logs of rf 1 and of rf 3, 128 B records, c=1 and c=64, the two alternated ROUNDS times.
# Next to them the disk's own figure for what rf=3 asks of it: 3 durable 4 KiB writers at
# once (fio O_DSYNC QD1, 3 jobs) against 1, and rf 1 with the disk as loaded as rf 3 loads it
# (3 logs whose heads are the 3 nodes, one appender each), so that the chain's own cost can be
# told from the disk's. The nodes' stage breakdown (--html) says where an append's time goes
# at the head.
#
#   tools/scripts/compare-chain.sh              # SECS=5 per measurement, ROUNDS=2
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-bench-out/chain-$(date +%Y%m%d-%H%M%S)}
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
mkdir -p "$OUT"
cargo build --release -q -p chainlog-tools
bench() {  # bench <name> <chainlog-bench append args...>
  local name=$1; shift
  target/release/chainlog-bench append --dev 3 --duration "$SECS" --record-size 128 \
    --json "$OUT/$name.json" --html "$OUT/$name.html" "$@" > "$OUT/$name.txt" 2>&1
  echo "chainlog $name: $(jq -r '"\(.records_per_s|floor) records/s, p50/p90/p99/p99.9/max us = \(.latency_us.p50)/\(.latency_us.p90)/\(.latency_us.p99)/\(.latency_us.p999)/\(.latency_us.max); head stages p50 us: \([.stages.stages[] | "\(.stage) \(.p50_us)"] | join(", "))"' "$OUT/$name.json")"
}
fio_dsync() {  # fio_dsync <jobs>: p50 µs of each job's durable 4 KiB writes
  local dir
  dir=$(mktemp -d -p "$PWD" fio-XXXX)
  fio --name=dsync --directory="$dir" --size=64m --bs=4k --rw=write --direct=1 \
    --ioengine=psync --sync=dsync --runtime="$SECS" --time_based --numjobs="$1" \
    --output-format=json > "$OUT/fio-$1.json" 2>/dev/null
  rm -rf "$dir"
  jq -r '[.jobs[].write.clat_ns.percentile."50.000000" / 1000 | floor] | join(" ")' "$OUT/fio-$1.json"
}
for round in $(seq "$ROUNDS"); do
  echo "fio O_DSYNC 4 KiB QD1, 1 job: p50 $(fio_dsync 1) us; 3 jobs at once: p50 $(fio_dsync 3) us"
  bench "rf1-c1-$round" --rf 1 --concurrency 1
  bench "rf3-c1-$round" --rf 3 --concurrency 1
  bench "rf1x3-c3-$round" --rf 1 --logs 3 --concurrency 3
  bench "rf1-c64-$round" --rf 1 --concurrency 64
  bench "rf3-c64-$round" --rf 3 --concurrency 64
done
{
  echo
  echo "ratios (same run, $SECS s each, $ROUNDS rounds; raw output in $OUT)"
  for round in $(seq "$ROUNDS"); do
    p1=$(jq .latency_us.p50 "$OUT/rf1-c1-$round.json")
    p3=$(jq .latency_us.p50 "$OUT/rf3-c1-$round.json")
    px=$(jq .latency_us.p50 "$OUT/rf1x3-c3-$round.json")
    r1=$(jq .records_per_s "$OUT/rf1-c64-$round.json")
    r3=$(jq .records_per_s "$OUT/rf3-c64-$round.json")
    echo "round $round: c=1 p50 rf3/rf1 = $p3/$p1 = $(jq -n "$p3/$p1*100|floor/100")x (target <= 1.5x);" \
      "rf3 against rf1 on an equally loaded disk (3 heads, c=1 each) = $p3/$px = $(jq -n "$p3/$px*100|floor/100")x;" \
      "c=64 records/s rf1 $(printf %.0f "$r1"), rf3 $(printf %.0f "$r3") ($(jq -n "$r3/$r1*100|floor/100")x)"
  done
} | tee "$OUT/summary.txt"
