#!/usr/bin/env bash
# Three members side by side: kardia with one shard per member, kardia with
# two (--experimental-sharded-cluster, issue #14) and etcd 3.4.23, PUTs over
# a 10,000-key overwrite set (benches/wrk/put_overwrite.lua, 64 connections,
# keys at the top level so --unit-depth 1 spreads them over the shards),
# sent to the leader (group 0's: the sequencer). Nothing is pinned: three
# members share the machine's cores with wrk, as `kardia-loadtest put
# --members 3` runs them.
#
#   benches/sharded_cluster.sh [RUNS] [SECONDS]     (defaults: 3 runs, 10 s)
#
# Rounds are interleaved. Prints one line per run; the medians go to
# docs/performance.md by hand.
set -euo pipefail
runs=${1:-3}; secs=${2:-10}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
for t in wrk etcd curl; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
work=$(mktemp -d); trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
base=24100
ic="n1=http://127.0.0.1:$((base+11)),n2=http://127.0.0.1:$((base+12)),n3=http://127.0.0.1:$((base+13))"

start3() {  # start3 SYSTEM [extra kardia flags...]: three members, prints pids
  local sys=$1; shift
  local d="$work/$sys-$RANDOM"
  for i in 1 2 3; do
    local c="http://127.0.0.1:$((base+i))" p="http://127.0.0.1:$((base+10+i))"
    if [ "$sys" = etcd ]; then
      etcd --enable-v2 --name "n$i" --data-dir "$d/n$i" --listen-client-urls "$c" \
        --advertise-client-urls "$c" --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
        --initial-cluster "$ic" --initial-cluster-state new >"$work/log$i" 2>&1 &
    else
      target/release/kardia --name "n$i" --data-dir "$d/n$i" --listen-client-urls "$c" \
        --advertise-client-urls "$c" --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
        --initial-cluster "$ic" --initial-cluster-state new "$@" >"$work/log$i" 2>&1 &
    fi
    echo $!
  done
}

leader_url() {  # the client URL of the leader, once a write goes through it
  for _ in $(seq 200); do
    local l
    l=$(curl -sf "http://127.0.0.1:$((base+1))/v2/members/leader" 2>/dev/null \
      | grep -o '"clientURLs":\["[^"]*' | sed 's/.*\["//') || true
    if [ -n "$l" ] && curl -sf -o /dev/null -XPUT "$l/v2/keys/ready" -d value=1; then
      echo "$l"; return
    fi
    sleep 0.1
  done
  echo "no leader" >&2; exit 1
}

for r in $(seq "$runs"); do
  for cfg in "kardia1:--shards 1" "kardia2:--shards 2 --unit-depth 1 --experimental-sharded-cluster" "etcd:"; do
    name=${cfg%%:*}; flags=${cfg#*:}
    sys=kardia; [ "$name" = etcd ] && sys=etcd
    # shellcheck disable=SC2086
    pids=$(start3 "$sys" $flags)
    url=$(leader_url)
    out=$(WRK_PREFIX=/hbo wrk -t1 -c64 -d"${secs}s" --latency -s benches/wrk/put_overwrite.lua "$url")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | grep -o 'p99=[0-9]*us')
    errs=$(echo "$out" | grep -o 'errors(.*)')
    echo "run $r $name: $rps req/s $p99 $errs"
    for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
    for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
  done
done
