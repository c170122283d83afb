#!/usr/bin/env bash
# compare-open-loop.sh: a single chainlog node under a steady offered load (open loop, Poisson
# arrivals, latency from the intended send time) next to fio driving the same file system at
# the same durable write rate, in one run: the table of issue 17 and BENCHMARKS.md's "open loop
# at 50% of max rate" row.
#
# For each offered rate: chainlog-bench append --rate R (128 B, one shard, SECS s), then fio at
# the durable write rate the node ran at (its group-commit writes per second: R divided by the
# records per write), 4 KiB O_DSYNC writes through io_uring with Poisson arrivals
# (--rate_iops, --rate_process=poisson), in a directory next to the node's data, twice:
#   - fio8:    up to 8 writes in flight (the issue's reference). While the device stalls, fio
#              stops issuing and measures from the late issue: the stall counts once per write
#              in flight, not for every write due during it (coordinated omission).
#   - fio1024: up to 1,024 in flight (as the bench's own bound): every write goes out on
#              schedule and waits out a stall, as the bench's appends do.
# The rates are RATES (the issue's 3,000 8,000 15,000 25,000 by default) and 25% and 50% of the
# node's closed-loop maximum (64 appenders), measured first. Each row also gives the
# generator's own send lateness and chainlog-bench's per-append breakdown around p50 and p99
# (generator, to_node, durable, answer, send, to_client: they add up to each append's latency).
#
# PRIORITIES: "normal" runs everything as started; "fifo" runs the node, the bench and fio
# under SCHED_FIFO (chrt -f 10), the bench and fio on the last core and the node's shard on
# core 0 (its own pinning), so that other processes on a shared machine cannot delay them. The
# default is both when root (fifo needs CAP_SYS_NICE), else normal.
#
#   tools/scripts/compare-open-loop.sh                 # SECS=5 per measurement, ROUNDS=1
#   SECS=10 ROUNDS=3 RATES="8000" PRIORITIES=fifo tools/scripts/compare-open-loop.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-5}
ROUNDS=${ROUNDS:-1}
RATES=${RATES:-3000 8000 15000 25000}
if [ "$(id -u)" = 0 ]; then PRIORITIES=${PRIORITIES:-normal fifo}; else PRIORITIES=${PRIORITIES:-normal}; fi
OUT=${OUT:-bench-out/open-loop-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-17550}
command -v jq >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null; }
mkdir -p "$OUT"
cargo build --release -q -p chainlog -p chainlog-tools
SCRATCH=$(mktemp -d -p "$PWD" open-loop-XXXX)
LAST_CORE=$(( $(nproc) - 1 ))
NODE_PID=
WRAP=()     # the node's wrapper
PINNED=()   # the bench's and fio's wrapper
stop_node() {
  if [ -n "$NODE_PID" ]; then kill -TERM "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
  NODE_PID=
}
trap 'stop_node; rm -rf "$SCRATCH"' EXIT
start_node() {  # one shard, data under $SCRATCH (the file system fio writes to)
  rm -rf "$SCRATCH/node"
  "${WRAP[@]}" target/release/chainlog node --data-dir "$SCRATCH/node" --listen 127.0.0.1:$PORT \
    --shards 1 2> "$OUT/node.log" &
  NODE_PID=$!
  for _ in $(seq 1 100); do grep -q "shard serving" "$OUT/node.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "node did not start" >&2; cat "$OUT/node.log" >&2; exit 1
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
bench() {  # bench <name> <chainlog-bench append args...>; exit status 3 (appends lost) is reported, not fatal
  local name=$1; shift
  "${PINNED[@]}" target/release/chainlog-bench append --target 127.0.0.1:$PORT --record-size 128 \
    --duration "$SECS" --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err" || [ $? -eq 3 ]
}
fio_at() {  # fio_at <name> <writes/s> <in flight at most>
  "${PINNED[@]}" fio --name=open-loop --directory="$SCRATCH" --size=1G --direct=1 --rw=write --bs=4k \
    --ioengine=io_uring --iodepth="$3" --sync=dsync --rate_iops="$2" --rate_process=poisson \
    --time_based --runtime="$SECS" --lat_percentiles=1 --percentile_list=50:99:99.9 \
    --output-format=json > "$OUT/$1.json" 2>/dev/null
  rm -f "$SCRATCH"/open-loop.*
}
j() { jq -r "$2" "$OUT/$1.json"; }
fio_row() {  # fio_row <name>: "p50/p99/p99.9/max (iops)" in µs
  j "$1" '.jobs[0].write | "\(.lat_ns.percentile["50.000000"]/1000|floor)/\(.lat_ns.percentile["99.000000"]/1000|floor)/\(.lat_ns.percentile["99.900000"]/1000|floor)/\(.lat_ns.max/1000|floor) (\(.iops|floor)/s)"'
}
ratio() {  # ratio <chainlog json> <fio json> <chainlog field> <fio percentile>
  jq -rn --slurpfile c "$OUT/$1.json" --slurpfile f "$OUT/$2.json" \
    "(\$c[0].latency_us.$3) / ((\$f[0].jobs[0].write.lat_ns.percentile[\"$4\"] / 1000) | if . < 1 then 1 else . end) * 100 | floor / 100"
}

for priority in $PRIORITIES; do
  case $priority in
    normal) WRAP=(); PINNED=() ;;
    fifo) WRAP=(chrt -f 10); PINNED=(chrt -f 10 taskset -c "$LAST_CORE") ;;
    *) echo "PRIORITIES: normal or fifo, not $priority" >&2; exit 2 ;;
  esac
  start_node
  bench "$priority-closed-c64" --concurrency 64
  max=$(j "$priority-closed-c64" '.records_per_s | floor')
  echo "[$priority] closed loop, 64 appenders: $max records/s, p99 $(j "$priority-closed-c64" .latency_us.p99) µs (load $(load))" \
    | tee -a "$OUT/table.txt"
  for round in $(seq "$ROUNDS"); do
    for rate in $RATES "$((max / 4)):25%" "$((max / 2)):50%"; do
      r=${rate%%:*}; label="$r/s"; [ "$rate" != "$r" ] && label="$r/s (${rate#*:} of max)"
      name=$priority-r$round-$r
      before=$(load)
      bench "$name" --rate "$r"
      # The node's durable write rate: records per second over records per group-commit write.
      writes=$(j "$name" '(.records_per_s / (.stages.batch_records.mean // 1)) | floor')
      fio_at "fio8-$name" "$writes" 8
      fio_at "fio1024-$name" "$writes" 1024
      {
        echo "[$priority] round $round, $label, $writes writes/s, load $before"
        echo "  chainlog p50/p99/p99.9/max µs  $(j "$name" '"\(.latency_us.p50)/\(.latency_us.p99)/\(.latency_us.p999)/\(.latency_us.max)"'), acknowledged $(j "$name" '.completion.acknowledged_share * 1000 | floor / 10')%, own lateness p99 $(j "$name" '.sends.own_lateness_us.p99') µs, held by the bound $(j "$name" '.sends.held_by_bound'), CPU $(j "$name" '.generator_cpu_share * 100 | floor')%"
        echo "  fio8                          $(fio_row "fio8-$name")   chainlog/fio8: p99 $(ratio "$name" "fio8-$name" p99 99.000000)x, p99.9 $(ratio "$name" "fio8-$name" p999 99.900000)x"
        echo "  fio1024                       $(fio_row "fio1024-$name")   chainlog/fio1024: p99 $(ratio "$name" "fio1024-$name" p99 99.000000)x, p99.9 $(ratio "$name" "fio1024-$name" p999 99.900000)x"
        j "$name" '.per_append.bands[]? | select(.percentile == "p50" or .percentile == "p99") |
          "  per append \(.percentile): \(.mean.total_us|floor) µs = " +
          ([.mean.stages_us[] | floor | tostring] | join(" + ")) +
          " (stages sum to \((.mean.stages_us | add) / .mean.total_us * 100 | floor)% of it, \(.appends) appends)"'
      } | tee -a "$OUT/table.txt"
    done
  done
  stop_node
done
echo "per-append stages: generator, to_node, durable, answer, send, to_client (README, chainlog-bench append); raw output in $OUT"
