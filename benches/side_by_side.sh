#!/usr/bin/env bash
# Side-by-side PUT benchmark: kardia and etcd 3.4.23, one member each, on
# loopback, measured with the same wrk scripts in the same run.
#
#   benches/side_by_side.sh [RUNS] [SECONDS]      (defaults: 3 runs, 10 s)
#
# Each server gets CPU 1 (taskset), wrk gets CPU 0. Rounds are interleaved
# (kardia, etcd, kardia, etcd, ...) so noise hits both. Every run starts a
# fresh server with a fresh data dir. Prints one line per run; the medians
# go to docs/performance.md by hand. Needs wrk and etcd (Debian packages).
set -euo pipefail
runs=${1:-3}; secs=${2:-10}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
command -v etcd >/dev/null || { echo "install etcd-server (../shared/tools/ref-etcd installs it)"; exit 1; }
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
. benches/lib.sh


for script in put put_overwrite; do
  for c in 64 1; do
    for r in $(seq "$runs"); do
      for sys in kardia etcd; do
        pid=$(bench_start "$sys" "http://127.0.0.1:$port")
        a=$(cpu "$pid")
        out=$(taskset -c 0 wrk -t1 -c$c -d${secs}s --latency -s "benches/wrk/$script.lua" "http://127.0.0.1:$port")
        b=$(cpu "$pid")
        rss=$(awk '/VmRSS/{print $2}' "/proc/$pid/status")
        bench_stop "$pid"
        rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
        tot=$(echo "$out" | sed -n 's/^total=\([0-9]*\).*/\1/p')
        errs=$(echo "$out" | sed -n 's/.*status=\([0-9]*\).*/\1/p')
        pct=$(echo "$out" | grep '^p50=')
        echo "$script c=$c run=$r $sys rps=$rps status_errors=$errs $pct cpu_us_per_req=$(( (b-a)*10000 / (tot>0?tot:1) )) rss_kb=$rss"
        sleep 1
      done
    done
  done
done
