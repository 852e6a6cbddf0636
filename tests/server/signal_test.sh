#!/usr/bin/env bash
# SIGTERM on carousel-sd-server: new requests get 503 while it drains, the request in flight completes with 200, the
# process exits 0; a drain that outlasts --drain-timeout, and a second SIGTERM, end the process at once with code 3
# (--device is tested by device_test.sh); --drain-grace keeps accepting while /health/ready says 503. Needs curl.
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

# Starts 2 images of 900 steps at max batch 1 (seconds of work, within the default work budget), waits until one runs, sends SIGTERM.
start_endless_and_signal() {
  curl -s -o /dev/null -X POST "$SERVER_URL/v1/images/generations" -H 'Content-Type: application/json' \
    -d '{"prompt": "endless", "steps": 900, "n": 2, "async": true}' || true
  for _ in $(seq 200); do
    curl -s "$SERVER_URL/metrics" | grep -q '^carousel_active_requests [1-9]' && break
    sleep 0.05
  done
  kill -TERM "$SERVER_PID"
  SIGNALLED=$(date +%s.%N)
}

# The drain grace: after SIGTERM, /health/ready is 503 at once while requests are still accepted for 2 s.
start_server "$binary" "$work/signal_grace.log" --model "$model" --device cpu --drain-grace 2
kill -TERM "$SERVER_PID"
ready=000
for _ in $(seq 50); do
  ready=$(curl -s -o /dev/null -w '%{http_code}' "$SERVER_URL/health/ready" || true)
  [ "$ready" = 503 ] && break
  sleep 0.02
done
accepted=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$SERVER_URL/v1/images/generations" \
  -H 'Content-Type: application/json' -d '{"prompt": "in the grace", "steps": 2}' || true)
rc=0
wait "$SERVER_PID" || rc=$?
echo "drain grace: /health/ready $ready, a request in the grace $accepted, exit code $rc"
[ "$ready" = 503 ] || { echo "FAIL: /health/ready was not 503 during the grace"; exit 1; }
[ "$accepted" = 200 ] || { cat "$work/signal_grace.log"; echo "FAIL: a request during the grace was refused"; exit 1; }
[ "$rc" = 0 ] || { echo "FAIL: exit code $rc"; exit 1; }

# The drain deadline: --drain-timeout 1 with minutes of work admitted.
start_server "$binary" "$work/signal_deadline.log" --model "$model" --device cpu --drain-timeout 1 --max-batch 1
start_endless_and_signal
rc=0
wait "$SERVER_PID" || rc=$?
took=$(echo "$(date +%s.%N) - $SIGNALLED" | bc)
echo "drain deadline 1 s: exit code $rc after $took s"
[ "$rc" = 3 ] || { cat "$work/signal_deadline.log"; echo "FAIL: exit code $rc, expected 3"; exit 1; }
grep -q 'the drain did not finish within 1 s' "$work/signal_deadline.log" || { echo "FAIL: no message"; exit 1; }

# A second signal during the drain.
start_server "$binary" "$work/signal_twice.log" --model "$model" --device cpu --max-batch 1
start_endless_and_signal
sleep 0.5
kill -0 "$SERVER_PID" || { cat "$work/signal_twice.log"; echo "FAIL: exited before the second signal"; exit 1; }
kill -TERM "$SERVER_PID"
rc=0
wait "$SERVER_PID" || rc=$?
echo "second SIGTERM: exit code $rc"
[ "$rc" = 3 ] || { cat "$work/signal_twice.log"; echo "FAIL: exit code $rc, expected 3"; exit 1; }
grep -q 'second signal 15: exiting' "$work/signal_twice.log" || { echo "FAIL: no message"; exit 1; }
echo PASS
