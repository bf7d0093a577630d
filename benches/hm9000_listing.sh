#!/usr/bin/env bash
# HM9000's `apps/actual` listing: kardia and etcd 3.4.23, one member each, in
# the same run, on the same data. Each server is filled with INSTANCES
# instance records of HM9000's shape (~210 bytes of JSON each, ttl 600) in
# INSTANCES/2 application directories under /hm/v4/apps/actual, through one
# keep-alive connection; then LISTINGS recursive GETs of /hm/v4/apps/actual
# are timed with curl, one after another.
#
#   benches/hm9000_listing.sh [INSTANCES] [LISTINGS]   (default: 100000 10)
#   KARDIA=/path/to/kardia benches/hm9000_listing.sh   (another build)
#   ORDER=sorted benches/hm9000_listing.sh             (see below)
#   VALUES=csv benches/hm9000_listing.sh               (see below)
#
# Applications are named by GUIDs in no relation to the order they are
# created in, as HM9000's are (random v4 UUIDs); ORDER=sorted creates them
# in name order instead, the layout's best case.
#
# The records are HM9000's instance heartbeats as JSON (its first format,
# Oct 2013, a quote every 7 bytes); VALUES=csv stores the CSV it wrote from
# Nov 2013 on (`index,STATE,timestamp,dea_guid`, ~60 bytes, no quotes).
#
# Each server gets CPU 1 (taskset), the client CPU 0. Prints, per system: the
# listing's size, its median and fastest time, the server CPU per
# listing, and the server's memory after the listings (and its peak).
# The figures go to docs/performance.md by hand.
set -euo pipefail
instances=${1:-100000}
listings=${2:-10}
order=${ORDER:-random}
values=${VALUES:-json}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
for t in etcd curl python3; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23980
kardia=${KARDIA:-target/release/kardia}
. benches/lib.sh

cat >"$work/fill.py" <<'EOF'
import http.client, json, sys
port, n, scramble = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "random"
c = http.client.HTTPConnection("127.0.0.1", port)
rec = {"state": "RUNNING", "index": 0, "instance": "i" * 36, "cc_partition": "default",
       "updated_at": 1700000000, "version": "v" * 36, "app": "a" * 36}
if sys.argv[4] == "csv":
    body = "value=0,RUNNING,1700000000.0," + "d" * 36 + "&ttl=600"
else:
    body = "value=" + json.dumps(rec, separators=(",", ":")).replace('"', "%22") + "&ttl=600"
hdr = {"Content-Type": "application/x-www-form-urlencoded"}
for i in range(n):
    app, inst = i // 2, i % 2
    if scramble:  # a bijection of 32-bit numbers: unique names, no order
        app = app * 2654435761 % 2**32
    c.request("PUT", f"/v2/keys/hm/v4/apps/actual/{app:08x}-0000-4000-8000-{app:012x}/"
              f"{inst:08x}-1111-4000-8000-{inst:012x}", body, hdr)
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
EOF
# curl reads a 50 MB body fast enough not to be what is measured.
list() {  # list PORT N -> size, median and fastest of N timed listings
  local url="http://127.0.0.1:$1/v2/keys/hm/v4/apps/actual?recursive=true"
  curl -s -o /dev/null "$url"  # warm
  for _ in $(seq "$2"); do curl -s -o /dev/null -w '%{time_total} %{size_download}\n' "$url"; done |
    sort -n | awk '{t[NR] = $1 * 1000; b = $2} END {
      printf "%.1f MB  median %.1f ms  fastest %.1f ms", b / 1e6, t[int((NR + 1) / 2)], t[1] }'
}

echo "$instances instances ($values values); applications created in $order order"
for sys in kardia etcd; do
  pid=$(bench_start $sys "http://127.0.0.1:$port")
  taskset -c 0 python3 "$work/fill.py" "$port" "$instances" "$order" "$values"
  before=$(cpu "$pid")
  printf '%-7s ' "$sys"
  taskset -c 0 bash -c "$(declare -f list); list $port $listings"
  echo "  server CPU $(( ($(cpu "$pid") - before) * 10 / (listings + 1) )) ms per listing  $(mem "$pid")"
  bench_stop "$pid"
done
