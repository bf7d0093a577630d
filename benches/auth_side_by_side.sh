#!/usr/bin/env bash
# What v2 auth costs: kardia and etcd 3.4.23, one member each, PUTs over a
# 10,000-key overwrite set (benches/wrk/put_overwrite.lua, 64 connections),
# with auth off and with auth on as a user whose role may write /hbo/*
# (HTTP basic auth on every request), in the same run.
#
#   benches/auth_side_by_side.sh [RUNS] [SECONDS]     (defaults: 3 runs, 8 s)
#
# Each server gets CPU 1 (taskset), wrk gets CPU 0. Rounds are interleaved.
# Prints one line per run; the medians go to docs/performance.md by hand.
# etcd checks the password with bcrypt on every request; kardia once per
# executor and credential (kardia_auth_password_checks_total).
set -euo pipefail
runs=${1:-3}; secs=${2:-8}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
for t in wrk etcd curl; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
c="http://127.0.0.1:$port"
user="Basic aGI6aGJwdw=="  # hb:hbpw

start() {  # start SYSTEM -> pid
  local d="$work/$1-$RANDOM" p="http://127.0.0.1:$((port+1))"
  if [ "$1" = kardia ]; then
    taskset -c 1 target/release/kardia --shards 1 --data-dir "$d" --listen-client-urls "$c" \
      --advertise-client-urls "$c" >"$work/log" 2>&1 &
  else
    taskset -c 1 etcd --enable-v2 --data-dir "$d" --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" --initial-cluster "default=$p" \
      >"$work/log" 2>&1 &
  fi
  local pid=$!
  for _ in $(seq 100); do curl -sf "$c/v2/keys/" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$pid"
}

enable_auth() {
  local j=(-sf -o /dev/null -XPUT -H "Content-Type: application/json")
  curl "${j[@]}" "$c/v2/auth/users/root" -d '{"user":"root","password":"rootpw"}'
  curl "${j[@]}" "$c/v2/auth/roles/hb" -d '{"role":"hb","permissions":{"kv":{"read":["/hbo/*"],"write":["/hbo/*"]}}}'
  curl "${j[@]}" "$c/v2/auth/users/hb" -d '{"user":"hb","password":"hbpw","roles":["hb"]}'
  curl -sf -o /dev/null -XPUT -u root:rootpw "$c/v2/auth/enable"
  curl -sf -o /dev/null -XPUT -u root:rootpw -H "Content-Type: application/json" "$c/v2/auth/roles/guest" \
    -d '{"role":"guest","revoke":{"kv":{"read":["/*"],"write":["/*"]}}}'
  # Auth is on and guests may not write: the bench user must be the one writing.
  [ "$(curl -s -o /dev/null -w '%{http_code}' -XPUT "$c/v2/keys/hbo/x" -d value=1)" = 401 ]
}

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

for r in $(seq "$runs"); do
  for sys in kardia etcd; do
    for mode in off on; do
      pid=$(start "$sys")
      auth=""
      if [ "$mode" = on ]; then enable_auth; auth="$user"; fi
      a=$(cpu "$pid")
      out=$(WRK_AUTH="$auth" taskset -c 0 wrk -t1 -c64 -d${secs}s --latency -s benches/wrk/put_overwrite.lua "$c")
      b=$(cpu "$pid")
      kill -9 "$pid"; wait "$pid" 2>/dev/null || true
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      tot=$(echo "$out" | sed -n 's/^total=\([0-9]*\).*/\1/p')
      errs=$(echo "$out" | sed -n 's/.*status=\([0-9]*\).*/\1/p')
      tmo=$(echo "$out" | sed -n 's/.*timeout=\([0-9]*\).*/\1/p')
      pct=$(echo "$out" | grep '^p50=')
      echo "run=$r $sys auth=$mode rps=$rps status_errors=$errs timeouts=$tmo $pct cpu_us_per_req=$(( (b-a)*10000 / (tot>0?tot:1) ))"
      sleep 1
    done
  done
done
