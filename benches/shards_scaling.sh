#!/usr/bin/env bash
# Shard scaling: distinct-directory PUT throughput of one kardia member at
# --shards 1 and --shards N (default 2) on this machine, same wrk load.
#
#   benches/shards_scaling.sh [RUNS] [SECONDS] [SHARDS]   (defaults 3, 10, 2)
#
# Executors pin themselves (shard i on CPU i mod cores). The load comes from
# wrk with pipelined requests (benches/wrk/put_dirs_pipelined.lua, DEPTH=16),
# so that the generator costs little next to the server; it runs unpinned.
# Every run starts a fresh server with a fresh data dir; rounds alternate.
set -euo pipefail
runs=${1:-3}; secs=${2:-10}; wide=${3:-2}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
c="http://127.0.0.1:$port"
for r in $(seq "$runs"); do
  for shards in 1 "$wide"; do
    d="$work/k-$RANDOM"
    target/release/kardia --data-dir "$d" --shards "$shards" --listen-client-urls "$c" \
      --advertise-client-urls "$c" >"$work/log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "$c/v2/keys/" >/dev/null 2>&1 && break; sleep 0.1; done
    # Create the 1024 directories first (member-wide operations), then measure.
    DEPTH=16 wrk -t1 -c16 -d2s -s benches/wrk/put_dirs_pipelined.lua "$c" >/dev/null
    a=$(awk '{print $14+$15}' "/proc/$pid/stat")
    out=$(DEPTH=${DEPTH:-16} wrk -t2 -c${CONNS:-32} -d${secs}s -s benches/wrk/put_dirs_pipelined.lua "$c")
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    errs=$(echo "$out" | sed -n 's/.*status=\([0-9]*\).*/\1/p')
    tot=$(echo "$out" | sed -n 's/^total=\([0-9]*\).*/\1/p')
    b=$(awk '{print $14+$15}' "/proc/$pid/stat")
    rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    echo "run=$r shards=$shards rps=$rps total=$tot status_errors=$errs server_cpu_us_per_req=$(( (b-a)*10000 / (tot>0?tot:1) )) rss_kb=$rss"
    sleep 1
  done
done
