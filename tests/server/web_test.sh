#!/usr/bin/env bash
# The web page in headless Chromium (tests/server/web_test.py) against carousel-sd-server started on a free port.
#   tests/server/web_test.sh BUILD_DIR [MODEL_DIR] [STEPS]
# Needs: chromium and chromium-driver (apt), selenium (pip). Leaves BUILD_DIR/server-page.png and
# BUILD_DIR/server-page-progress.png; the server must exit 0 on SIGTERM afterwards.
set -euo pipefail
build=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
model=${2:-$root/tests/data/models/sd-tiny}
steps=${3:-300}
source "$root/tests/server/server_lib.sh"

start_server "$build/examples/sd_server/carousel-sd-server" "$build/web_server.log" --model "$model"
status=0
python3 "$root/tests/server/web_test.py" --url "$SERVER_URL" --screenshot "$build/server-page.png" --steps "$steps" ||
  status=$?
stop_server
[ "$status" = 0 ] || { echo "FAIL: web test"; exit 1; }
[ "$SERVER_RC" = 0 ] || { echo "FAIL: server exit code $SERVER_RC"; exit 1; }
echo PASS
