#!/usr/bin/env bash
# Server CPU per PUT of several kardia builds, rounds alternating, with the
# data dir on tmpfs by default: a sync there costs nothing, so what is left
# is kardia's own work and the kernel's TCP — the figure a change to the
# request path moves. On this machine's disk the sync's time and its
# interrupt on the server's core (docs/performance.md, *What is left of a
# PUT on this machine*) add ±20 % of noise that hides changes of a few
# per cent. DISK=1 puts the data dir on the disk instead.
#
#   benches/put_cpu.sh ROUNDS BIN [BIN...]    e.g. benches/put_cpu.sh 3 /tmp/kardia-base target/release/kardia
#   DISK=1 DURATION=8s CONNS=64 benches/put_cpu.sh 3 BIN...
#   MALLOC=1 benches/put_cpu.sh 1 BIN...      (also count malloc calls per PUT: root and perf needed)
#
# Each round runs every build once, on a fresh data dir: one member on
# CPU 1 (taskset), `kardia-loadtest put --keys 10000 --ttl 30` on CPU 0.
# Prints per run: PUTs/s, the server's CPU per PUT (its threads' ticks over
# the PUTs the shard executed, from /metrics), the WAL sync mean, the batch
# mean, p50/p99; then each build's medians.
set -euo pipefail
rounds=${1:?usage: benches/put_cpu.sh ROUNDS BIN [BIN...]}
shift
[ $# -ge 1 ] || { echo "usage: benches/put_cpu.sh ROUNDS BIN [BIN...]"; exit 2; }
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia-loadtest
for t in curl taskset awk; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
if [ -n "${DISK:-}" ]; then work=$(mktemp -d); else work=$(mktemp -d -p /dev/shm); fi
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
c="http://127.0.0.1:$port"
. benches/lib.sh

if [ -n "${MALLOC:-}" ]; then
  libc=$(ldd "$1" | awk '/libc.so/ {print $3}')
  perf probe -q -x "$libc" -a malloc 2>/dev/null || true
  trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"; perf probe -q -d probe_libc:malloc 2>/dev/null' EXIT
fi

metric() { curl -s "$c/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

results="$work/results"
for round in $(seq "$rounds"); do
  for bin in "$@"; do
    kardia=$bin
    pid=$(bench_start kardia "$c")
    out="$work/lt"
    taskset -c 0 target/release/kardia-loadtest put --target "$c" --keys 10000 --ttl 30 \
      -c "${CONNS:-64}" -d "${DURATION:-8s}" --no-report >"$out" 2>&1 &
    lt=$!
    mallocs=-
    if [ -n "${MALLOC:-}" ]; then
      sleep 4
      a=$(metric 'kardia_shard_batch_commands_sum{shard="0"}')
      perf stat -x, -e probe_libc:malloc -p "$pid" -o "$work/pstat" -- sleep 1
      b=$(metric 'kardia_shard_batch_commands_sum{shard="0"}')
      mallocs=$(awk -F, -v a="$a" -v b="$b" '/malloc/ {printf "%.2f", $1 / (b - a)}' "$work/pstat")
    fi
    wait "$lt"
    puts=$(metric 'kardia_shard_batch_commands_sum{shard="0"}')
    batches=$(metric 'kardia_shard_batch_commands_count{shard="0"}')
    syncs=$(metric etcd_disk_wal_fsync_duration_seconds_count)
    sync_s=$(metric etcd_disk_wal_fsync_duration_seconds_sum)
    ticks=$(awk '{s += $14 + $15} END {print s}' /proc/"$pid"/task/*/stat)
    bench_stop "$pid"
    tput=$(awk '/throughput/ {gsub(",", "", $3); print $3}' "$out")
    p50=$(awk '/latency p50/ {print $3 $4}' "$out")
    p99=$(awk '/latency p99 / {print $3 $4}' "$out")
    # Ticks are 10 ms; the PUTs include the 10,000-key prefill.
    awk -v bin="$bin" -v r="$round" -v t="$tput" -v ticks="$ticks" -v puts="$puts" \
      -v syncs="$syncs" -v ss="$sync_s" -v batches="$batches" -v p50="$p50" -v p99="$p99" -v m="$mallocs" \
      'BEGIN {printf "%s round %d: %s PUT/s, %.1f us CPU/PUT, sync %.0f us, batch %.1f, p50 %s, p99 %s, mallocs/PUT %s\n",
              bin, r, t, ticks * 10000 / puts, ss / syncs * 1e6, puts / batches, p50, p99, m}' | tee -a "$results"
  done
done

echo
echo "medians (CPU per PUT, PUT/s) over $rounds round(s):"
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for bin in "$@"; do
  runs=$(grep -F "$bin round" "$results")
  cpu=$(echo "$runs" | sed 's/.*PUT\/s, \([0-9.]*\) us CPU.*/\1/' | median)
  tp=$(echo "$runs" | sed 's/.*: \([0-9]*\) PUT\/s,.*/\1/' | median)
  echo "  $bin: $cpu us, $tp PUT/s"
done
