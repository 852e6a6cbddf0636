#!/usr/bin/env bash
# --device on carousel-sd-server and carousel-sd: an unknown name exits 2 naming the choices; --device cuda where the
# CUDA backend cannot run (a build without CUDA, or no GPU) exits 2 with the reason, and where it can, runs on the GPU
# (/health says "cuda", the CLI writes its image); --device cpu and auto start, and auto picks cuda exactly when cuda
# works; the --cuda-* flags refuse bad values and are accepted on any device. Needs curl.
#   tests/server/device_test.sh SERVER_BINARY CLI_BINARY MODEL_DIR WORK_DIR CUDA_BUILT(ON|OFF)
set -euo pipefail
server=$1 cli=$2 model=$3 work=$4 cuda_built=$5
here=$(cd "$(dirname "$0")" && pwd)
source "$here/server_lib.sh"
mkdir -p "$work"

fail() {
  echo "FAIL: $*"
  exit 1
}

# Runs "$@" with stderr to $work/err; sets rc.
run() {
  rc=0
  "$@" 2>"$work/err" >"$work/out" || rc=$?
}

# The device /health reports for a server started with these flags.
health_device() {
  start_server "$server" "$work/server.log" --model "$model" "$@"
  curl -s "$SERVER_URL/health" | sed -n 's/.*"device":"\([a-z]*\)".*/\1/p'
  stop_server
  [ "$SERVER_RC" = 0 ] || fail "server $* exited with $SERVER_RC"
}

# The same flags for both binaries (the CLI needs a prompt, the server takes none).
both() {
  local device=$1
  run "$server" --model "$model" --device "$device" --port 0 --host 256.0.0.1
  server_rc=$rc
  cp "$work/err" "$work/server.err"
  run "$cli" --model "$model" --device "$device" --prompt x
  cli_rc=$rc
  cp "$work/err" "$work/cli.err"
}

both tpu
for b in server cli; do
  code=${b}_rc
  [ "${!code}" = 2 ] || fail "$b --device tpu: exit code ${!code}, expected 2"
  grep -q "expected auto, cpu or cuda, got 'tpu'" "$work/$b.err" || { cat "$work/$b.err"; fail "$b --device tpu: message"; }
done

# --device cuda: refused with the reason, or (a CUDA build on a GPU machine) run.
cuda_works=no
run "$server" --model "$model" --device cuda --port 0 --host 256.0.0.1
if [ "$rc" = 2 ]; then
  if [ "$cuda_built" = ON ]; then reason="no CUDA device"; else reason="built without CUDA"; fi
  both cuda
  for b in server cli; do
    code=${b}_rc
    [ "${!code}" = 2 ] || fail "$b --device cuda: exit code ${!code}, expected 2"
    grep -q -- "--device cuda: the CUDA backend cannot run here: $reason" "$work/$b.err" ||
      { cat "$work/$b.err"; fail "$b --device cuda: message"; }
  done
  echo "--device cuda refused: $(head -1 "$work/server.err")"
else
  # The device was accepted; the server then failed to bind the impossible address (exit 1), after loading.
  [ "$cuda_built" = ON ] || fail "--device cuda accepted by a build without CUDA"
  cuda_works=yes
  [ "$(health_device --device cuda)" = cuda ] || fail "/health of --device cuda"
  run "$cli" --model "$model" --device cuda --prompt "a red circle" --steps 3 --out "$work/cuda.png"
  [ "$rc" = 0 ] && [ -s "$work/cuda.png" ] || { cat "$work/err"; fail "carousel-sd --device cuda"; }
  grep -q " on cuda: " "$work/out" || fail "carousel-sd --device cuda: summary line"
  echo "--device cuda runs on the GPU"
fi

[ "$(health_device --device cpu)" = cpu ] || fail "/health of --device cpu"
if [ "$cuda_works" = yes ]; then want=cuda; else want=cpu; fi
[ "$(health_device)" = "$want" ] || fail "/health without --device (auto): expected $want"
[ "$(health_device --device auto)" = "$want" ] || fail "/health of --device auto: expected $want"
run "$cli" --model "$model" --device cpu --prompt "a red circle" --steps 2 --out "$work/cpu.png"
[ "$rc" = 0 ] && grep -q " on cpu: " "$work/out" || { cat "$work/err" "$work/out"; fail "carousel-sd --device cpu"; }
echo "--device cpu runs on the CPU; auto picks $want"

# The --cuda-* flags: a bad value exits 2 naming the choices on both binaries; good values are accepted whatever the
# device (they matter only on cuda), and on a GPU the server runs with graphs and timed convolution algorithms.
for flag in "--cuda-graphs maybe:expected off or on, got 'maybe'" \
  "--cuda-conv-search fast:expected heuristic or exhaustive, got 'fast'"; do
  name=${flag%% *} rest=${flag#* } value=${rest%%:*} message=${flag#*:}
  run "$server" --model "$model" --device cpu "$name" "$value" --port 0 --host 256.0.0.1
  [ "$rc" = 2 ] && grep -q -- "$name: $message" "$work/err" || { cat "$work/err"; fail "server $name $value"; }
  run "$cli" --model "$model" --device cpu "$name" "$value" --prompt x
  [ "$rc" = 2 ] && grep -q -- "$name: $message" "$work/err" || { cat "$work/err"; fail "carousel-sd $name $value"; }
done
[ "$(health_device --device cpu --cuda-graphs on --cuda-conv-search exhaustive)" = cpu ] ||
  fail "/health of --device cpu with --cuda-* flags"
run "$cli" --model "$model" --device cpu --cuda-graphs off --cuda-conv-search heuristic --prompt "a red circle" \
  --steps 2 --out "$work/cpu-flags.png"
[ "$rc" = 0 ] || { cat "$work/err"; fail "carousel-sd --device cpu with --cuda-* flags"; }
if [ "$cuda_works" = yes ]; then
  [ "$(health_device --device cuda --cuda-graphs on --cuda-conv-search exhaustive)" = cuda ] ||
    fail "/health of --device cuda --cuda-graphs on --cuda-conv-search exhaustive"
  run "$cli" --model "$model" --device cuda --cuda-graphs on --cuda-conv-search exhaustive --prompt "a red circle" \
    --steps 3 --out "$work/cuda-graphs.png"
  [ "$rc" = 0 ] && [ -s "$work/cuda-graphs.png" ] || { cat "$work/err"; fail "carousel-sd --device cuda --cuda-*"; }
  echo "--cuda-graphs on --cuda-conv-search exhaustive run on the GPU"
fi
echo "--cuda-* flags: bad values refused, good ones accepted"
echo PASS
