#!/usr/bin/env bash
# A short headless Locust run against carousel-sd-server on the tiny fixture model: zero failed requests, the CSV
# summary kept in the build folder, then SIGTERM and exit code 0.
#   tests/server/locust_smoke.sh BUILD_DIR [MODEL_DIR] [RUN_TIME]
# Needs: locust (pip install locust), the carousel-sd-server binary built in BUILD_DIR.
# Leaves BUILD_DIR/locust_stats.csv (and _stats_history, _failures, _exceptions) and BUILD_DIR/locust_server.log.
set -euo pipefail
build=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
model=${2:-$root/tests/data/models/sd-tiny}
run_time=${3:-20s}
source "$root/tests/server/server_lib.sh"

start_server "$build/examples/sd_server/carousel-sd-server" "$build/locust_server.log" --model "$model" --max-batch 4
echo "server: $SERVER_URL (model $model)"
status=0
locust --headless -f "$root/benchmarks/locustfile.py" --host "$SERVER_URL" --users 4 --spawn-rate 4 \
  --run-time "$run_time" --csv "$build/locust" --steps 10 --only-summary ClosedLoopUser || status=$?
stop_server
echo "locust exit status: $status; server exit code: $SERVER_RC"

python3 - "$build/locust_stats.csv" <<'PY'
import csv, sys
rows = {r["Name"]: r for r in csv.DictReader(open(sys.argv[1]))}
agg = rows["Aggregated"]
n, failures = int(agg["Request Count"]), int(agg["Failure Count"])
print(f"requests {n}, failures {failures}, median {agg['Median Response Time']} ms, "
      f"p95 {agg['95%']} ms, p99 {agg['99%']} ms, throughput {float(agg['Requests/s']):.2f} req/s")
if n == 0 or failures != 0:
    sys.exit("FAIL: expected requests and zero failures")
PY
[ "$SERVER_RC" = 0 ] || { echo "FAIL: server exit code $SERVER_RC"; tail "$build/locust_server.log"; exit 1; }
echo PASS
