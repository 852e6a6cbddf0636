# Shell helpers for the carousel-sd-server scripts (sourced, not run): start the binary on a free loopback port and
# stop it with SIGTERM.
#   start_server BINARY LOGFILE [server flags...]   sets SERVER_PID and SERVER_URL (waits up to 60 s for readiness)
#   stop_server                                     SIGTERM, waits, sets SERVER_RC to the exit code

start_server() {
  local binary=$1 log=$2
  shift 2
  "$binary" --port 0 "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  local port=""
  for _ in $(seq 600); do
    port=$(sed -n 's|^listening on http://[^:]*:\([0-9]*\)$|\1|p' "$log")
    [ -n "$port" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "server exited during startup:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  if [ -z "$port" ]; then
    echo "server did not start within 60 s" >&2
    kill -TERM "$SERVER_PID"
    return 1
  fi
  SERVER_URL="http://127.0.0.1:$port"
}

stop_server() {
  kill -TERM "$SERVER_PID"
  SERVER_RC=0
  wait "$SERVER_PID" || SERVER_RC=$?
}
