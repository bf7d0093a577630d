#!/usr/bin/env bash
# Small requests during a burst of large listings: kardia and etcd 3.4.23,
# one member each, in the same run. /big holds 10,000 keys of 1 KiB (a 10 MB
# recursive listing); 50 clients each pipeline 1000 recursive GETs of it and
# never read; meanwhile one client GETs a small key every 50 ms for 10 s.
#
#   benches/bulk_reads.sh [RUNS]     (default: 3 runs)
#   KARDIA=/path/to/kardia benches/bulk_reads.sh   (another build, e.g. before a change)
#
# Each server gets CPU 1 (taskset), the clients CPU 0. Prints, per run and
# system: one listing alone (ms), then the small GETs' p50 / p99 / max (ms)
# during the burst and the server's peak RSS (MiB). The medians go to
# docs/performance.md by hand.
set -euo pipefail
runs=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release -q -p kardia
for t in etcd curl python3; do command -v $t >/dev/null || { echo "install $t"; exit 1; }; done
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=23990
kardia=${KARDIA:-target/release/kardia}
. benches/lib.sh

cat >"$work/burst.py" <<'EOF'
import http.client, socket, statistics, sys, threading, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
def rss():
    with open(f"/proc/{pid}/status") as f:
        for l in f:
            if l.startswith("VmRSS:"):
                return int(l.split()[1]) // 1024
c = http.client.HTTPConnection("127.0.0.1", port)
body = "value=" + "v" * 1024
hdr = {"Content-Type": "application/x-www-form-urlencoded"}
for i in range(10000):
    c.request("PUT", "/v2/keys/big/k%05d" % i, body, hdr); c.getresponse().read()
c.request("PUT", "/v2/keys/small", "value=x", hdr); c.getresponse().read()
t = time.time(); c.request("GET", "/v2/keys/big?recursive=true"); c.getresponse().read()
alone = (time.time() - t) * 1000
one = b"GET /v2/keys/big?recursive=true HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
hogs = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
for h in hogs:
    h.setblocking(False)
    try: h.send(one)
    except BlockingIOError: pass
waits, peak = [], 0
end = time.time() + 10
while time.time() < end:
    t = time.time()
    p = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    p.request("GET", "/v2/keys/small"); p.getresponse().read(); p.close()
    waits.append((time.time() - t) * 1000)
    peak = max(peak, rss())
    time.sleep(0.05)
waits.sort()
q = lambda f: waits[min(len(waits) - 1, int(f * len(waits)))]
print(f"alone {alone:.0f} ms  small GETs p50 {q(0.5):.1f} p99 {q(0.99):.1f} max {waits[-1]:.1f} ms  peak RSS {peak} MiB")
EOF

for r in $(seq "$runs"); do
  for sys in kardia etcd; do
    pid=$(bench_start $sys "http://127.0.0.1:$port")
    printf 'run %d %-7s ' "$r" "$sys"
    taskset -c 0 python3 "$work/burst.py" "$port" "$pid"
    bench_stop "$pid"
  done
done
