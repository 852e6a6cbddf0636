#!/usr/bin/env bash
# SIGTERM on carousel-sd-server: new requests get 503 while it drains, the request in flight completes with 200, the
# process exits 0 (--device is tested by device_test.sh). Needs curl.
#   tests/server/signal_test.sh BINARY MODEL_DIR WORK_DIR
set -euo pipefail
binary=$1 model=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
source "$here/server_lib.sh"
mkdir -p "$work"

start_server "$binary" "$work/signal_server.log" --model "$model" --device cpu
# A request long enough (about 2 s on the tiny model) to be in flight when the signal arrives.
curl -s -o "$work/signal_inflight.json" -w '%{http_code}' -X POST "$SERVER_URL/v1/images/generations" \
  -H 'Content-Type: application/json' -d '{"prompt": "in flight", "steps": 300, "seed": 1}' >"$work/signal_inflight.code" &
curl_pid=$!
for _ in $(seq 200); do
  curl -s "$SERVER_URL/metrics" | grep -q '^carousel_active_requests 1$' && break
  sleep 0.05
done
kill -TERM "$SERVER_PID"
refused=000
for _ in $(seq 100); do
  refused=$(curl -s -o "$work/signal_refused.json" -w '%{http_code}' -X POST "$SERVER_URL/v1/images/generations" \
    -H 'Content-Type: application/json' -d '{"prompt": "too late", "steps": 2}' || true)
  [ "$refused" = 503 ] && break
  sleep 0.02
done
wait "$curl_pid"
rc=0
wait "$SERVER_PID" || rc=$?
inflight=$(cat "$work/signal_inflight.code")
echo "in-flight request: HTTP $inflight; request during drain: HTTP $refused; exit code: $rc"
[ "$inflight" = 200 ] || { echo "FAIL: the in-flight request did not complete"; exit 1; }
[ "$refused" = 503 ] || { echo "FAIL: a request during the drain was not refused with 503"; exit 1; }
[ "$rc" = 0 ] || { cat "$work/signal_server.log"; echo "FAIL: exit code $rc"; exit 1; }
grep -q '"b64_json"' "$work/signal_inflight.json" || { echo "FAIL: no image in the in-flight response"; exit 1; }
echo PASS
