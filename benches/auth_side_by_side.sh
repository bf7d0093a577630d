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

. benches/lib.sh

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


for r in $(seq "$runs"); do
  for sys in kardia etcd; do
    for mode in off on; do
      pid=$(bench_start "$sys" "$c")
      auth=""
      if [ "$mode" = on ]; then enable_auth; auth="$user"; fi
      a=$(cpu "$pid")
      out=$(WRK_AUTH="$auth" taskset -c 0 wrk -t1 -c64 -d${secs}s --latency -s benches/wrk/put_overwrite.lua "$c")
      b=$(cpu "$pid")
      bench_stop "$pid"
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
