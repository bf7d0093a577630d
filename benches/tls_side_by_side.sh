#!/usr/bin/env bash
# What TLS costs on the client port: kardia and etcd 3.4.23, one member
# each, PUTs over a 10,000-key overwrite set (benches/wrk/put_overwrite.lua,
# 64 connections), over http:// and over https:// with the same certificate
# (EC P-256, made here with openssl), in the same run.
#
#   benches/tls_side_by_side.sh [RUNS] [SECONDS]     (defaults: 3 runs, 8 s)
#
# Each server gets CPU 1 (taskset), wrk gets CPU 0. Rounds are interleaved
# so noise hits every configuration. Prints one line per run; the medians go
# to docs/performance.md by hand. Needs wrk (with TLS), etcd and openssl.
set -euo pipefail
runs=${1:-3}; secs=${2:-8}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
for t in wrk etcd openssl; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
(
  cd "$work"
  key="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
  openssl req -x509 $key -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca 2>/dev/null
  openssl req $key -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' > ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
    -days 2 -extfile ext 2>/dev/null
)
tls="--cert-file $work/server.crt --key-file $work/server.key"
curl_opts="--cacert $work/ca.crt"
. benches/lib.sh

start() {  # start SYSTEM SCHEME -> pid
  local extra=""; [ "$2" = https ] && extra="$tls"
  # shellcheck disable=SC2086
  bench_start "$1" "$2://127.0.0.1:$port" $extra
}

for r in $(seq "$runs"); do
  for sys in kardia etcd; do
    for scheme in http https; do
      pid=$(start "$sys" "$scheme")
      a=$(cpu "$pid")
      out=$(taskset -c 0 wrk -t1 -c64 -d${secs}s --latency -s benches/wrk/put_overwrite.lua "$scheme://127.0.0.1:$port")
      b=$(cpu "$pid")
      bench_stop "$pid"
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      tot=$(echo "$out" | sed -n 's/^total=\([0-9]*\).*/\1/p')
      errs=$(echo "$out" | sed -n 's/.*status=\([0-9]*\).*/\1/p')
      pct=$(echo "$out" | grep '^p50=')
      echo "run=$r $sys $scheme rps=$rps status_errors=$errs $pct cpu_us_per_req=$(( (b-a)*10000 / (tot>0?tot:1) ))"
      sleep 1
    done
  done
done
