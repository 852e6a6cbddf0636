#!/usr/bin/env bash
# A local carousel cluster on 127.0.0.1: N carousel-sd-server replicas (the bundled model unless the server options
# name another), HAProxy in front (deploy/haproxy/haproxy.cfg) and Prometheus (deploy/prometheus/), from Debian's
# packages. Returns once the front answers; its last two lines are the front's and Prometheus's addresses.
#
# Usage: scripts/cluster.sh [--replicas N] [--port P] [--build-dir DIR] [--run-dir DIR] [-- server options]
#        scripts/cluster.sh --stop [--run-dir DIR]
#
# Ports: the front P (default 8080), HAProxy's /metrics and /stats P+1, Prometheus P+2, replica i (1..N) HTTP
# P+100+i and its HAProxy agent P+200+i. Logs and state live in the run directory (default build/cluster).
# --stop sends SIGTERM to exactly the processes this script started (by the PIDs it recorded, checked against their
# command lines): the replicas drain their admitted requests and exit; anything still running after 60 s gets SIGKILL.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
replicas=3
port=8080
build_dir="$root/build"
run_dir=""
stop=0
server_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --stop) stop=1; shift ;;
    --) shift; server_args=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
run_dir="${run_dir:-$root/build/cluster}"
pids="$run_dir/pids"

# Prints the PID recorded for NAME if that process still runs the program it was started as.
live_pid() {
  local name="$1" program="$2" pid
  pid=$(awk -v n="$name" '$1 == n { print $2 }' "$pids" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q -- "$program" \
    && echo "$pid"
}

stop_all() {
  [ -f "$pids" ] || { echo "cluster.sh: nothing recorded in $pids"; return 0; }
  local name program pid waiting=()
  while read -r name pid program; do
    if pid=$(live_pid "$name" "$program"); then
      kill -TERM "$pid" 2>/dev/null && waiting+=("$pid")
    fi
  done < "$pids"
  for _ in $(seq 1 600); do
    local alive=0
    for pid in "${waiting[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${waiting[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$pids"
  echo "cluster.sh: stopped ${#waiting[@]} processes"
}

if [ "$stop" -eq 1 ]; then
  stop_all
  exit 0
fi

[[ "$replicas" =~ ^[1-9][0-9]?$ ]] || { echo "cluster.sh: --replicas: expected 1..99, got '$replicas'" >&2; exit 2; }
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1024 ] && [ "$port" -le 65000 ] \
  || { echo "cluster.sh: --port: expected 1024..65000, got '$port'" >&2; exit 2; }
if [ -f "$pids" ]; then
  while read -r name pid program; do
    if live_pid "$name" "$program" >/dev/null; then
      echo "cluster.sh: a cluster recorded in $pids still runs; scripts/cluster.sh --stop first" >&2
      exit 1
    fi
  done < "$pids"
fi

"$root/scripts/install-deps.sh" haproxy prometheus curl
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_TESTS=OFF \
        -DCAROUSEL_BUILD_BENCHMARKS=OFF >/dev/null
fi
cmake --build "$build_dir" -j"$(nproc)" --target carousel-sd-server >/dev/null
server="$build_dir/examples/sd_server/carousel-sd-server"

front=$port stats=$((port + 1)) prom=$((port + 2))
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$front" "$stats" "$prom" $(seq $((port + 101)) $((port + 100 + replicas))) \
         $(seq $((port + 201)) $((port + 200 + replicas))); do
  if in_use "$p"; then echo "cluster.sh: port $p is in use; choose another --port" >&2; exit 1; fi
done

rm -rf "$run_dir"
mkdir -p "$run_dir/targets"
: > "$pids"
cleanup_on_error() { echo "cluster.sh: start failed; logs in $run_dir" >&2; stop_all >&2; }
trap cleanup_on_error ERR

# Waits until URL answers 200, for at most SECONDS.
wait_for() {
  local url="$1" seconds="$2"
  for _ in $(seq 1 $((seconds * 10))); do
    curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster.sh: $url did not answer within $seconds s" >&2
  return 1
}

# --drain-grace 3: on SIGTERM a replica turns unready (agent: drain) but accepts requests for 3 s more, longer than
# HAProxy needs to notice (agent-inter 1 s), so that no request meets its refusal. Each replica runs under a small
# supervisor shell that records its PID and, when it ends, its exit status
# (replicaI.rc): a drained replica exits 0.
for i in $(seq 1 "$replicas"); do
  setsid bash -c '"$@" > "$0.log" 2>&1 & echo $! > "$0.pid"; wait $!; echo $? > "$0.rc"' \
    "$run_dir/replica$i" "$server" --host 127.0.0.1 --port $((port + 100 + i)) --agent-port $((port + 200 + i)) \
    --drain-grace 3 \
    ${server_args[@]+"${server_args[@]}"} < /dev/null > /dev/null 2>&1 &
done
for i in $(seq 1 "$replicas"); do
  for _ in $(seq 1 50); do [ -s "$run_dir/replica$i.pid" ] && break; sleep 0.1; done
  echo "replica$i $(cat "$run_dir/replica$i.pid") carousel-sd-server" >> "$pids"
done
for i in $(seq 1 "$replicas"); do wait_for "http://127.0.0.1:$((port + 100 + i))/health/ready" 120; done

{
  cat "$root/deploy/haproxy/haproxy.cfg"
  for i in $(seq 1 "$replicas"); do
    echo "    server replica$i 127.0.0.1:$((port + 100 + i)) agent-port $((port + 200 + i))"
  done
} > "$run_dir/haproxy.cfg"
export CAROUSEL_FRONT_BIND="127.0.0.1:$front" CAROUSEL_STATS_BIND="127.0.0.1:$stats"
haproxy -c -q -f "$run_dir/haproxy.cfg"
setsid haproxy -f "$run_dir/haproxy.cfg" -p "$run_dir/haproxy.pid" > "$run_dir/haproxy.log" 2>&1 < /dev/null &
echo "haproxy $! haproxy" >> "$pids"

cp "$root/deploy/prometheus/prometheus.yml" "$root/deploy/prometheus/rules.yml" "$run_dir/"
{
  printf '[{"targets": ['
  for i in $(seq 1 "$replicas"); do
    [ "$i" -gt 1 ] && printf ', '
    printf '"127.0.0.1:%d"' $((port + 100 + i))
  done
  printf '], "labels": {"cluster": "local"}}]\n'
} > "$run_dir/targets/carousel.json"
printf '[{"targets": ["127.0.0.1:%d"], "labels": {"cluster": "local"}}]\n' "$stats" > "$run_dir/targets/haproxy.json"
setsid prometheus --config.file="$run_dir/prometheus.yml" --storage.tsdb.path="$run_dir/tsdb" \
  --web.listen-address="127.0.0.1:$prom" > "$run_dir/prometheus.log" 2>&1 < /dev/null &
echo "prometheus $! prometheus" >> "$pids"

wait_for "http://127.0.0.1:$front/health/ready" 30
wait_for "http://127.0.0.1:$prom/-/ready" 30
trap - ERR
echo "replicas: $replicas (logs in $run_dir), stop with: scripts/cluster.sh --stop --run-dir $run_dir"
echo "front: http://127.0.0.1:$front"
echo "prometheus: http://127.0.0.1:$prom"
