# Shared by the side-by-side scripts (sourced, not run): start a one-member
# kardia or etcd 3.4.23 on CPU 1, stop it, read its CPU time.
# Needs $work (a temp dir) and $port (client port; the peer port is $port+1).
# Optional: $kardia (the kardia binary; default target/release/kardia) and
# $curl_opts (extra curl flags for the readiness check, e.g. --cacert).

bench_start() {  # bench_start SYSTEM CLIENT_URL [extra flags...] -> pid
  local sys=$1 c=$2; shift 2
  local d="$work/$sys-$RANDOM" p="http://127.0.0.1:$((port+1))"
  if [ "$sys" = kardia ]; then
    taskset -c 1 "${kardia:-target/release/kardia}" --shards 1 --data-dir "$d" \
      --listen-client-urls "$c" --advertise-client-urls "$c" "$@" >"$work/log" 2>&1 &
  else
    taskset -c 1 etcd --enable-v2 --data-dir "$d" --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" --initial-cluster "default=$p" \
      "$@" >"$work/log" 2>&1 &
  fi
  local pid=$!
  # shellcheck disable=SC2086
  for _ in $(seq 100); do curl -sf ${curl_opts:-} "$c/v2/keys/" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "$pid"
}

bench_stop() {  # bench_stop PID: SIGKILL, then wait until it is gone (ports free)
  kill -9 "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }  # user+system ticks of PID
mem() { awk '/VmRSS|VmHWM/ {m[$1] = int($2 / 1024)} END {printf "RSS %d MB (peak %d MB)", m["VmRSS:"], m["VmHWM:"]}' "/proc/$1/status"; }
