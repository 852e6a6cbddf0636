#!/usr/bin/env bash
# Builds carousel and runs the example Stable Diffusion server on the bundled model (CPU), at http://127.0.0.1:8080/.
# Usage: scripts/run.sh [carousel-sd-server options, e.g. --port 9000 --model /path/to/sd-1.5-diffusers]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_TESTS=OFF -DCAROUSEL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target carousel-sd-server
exec build/examples/sd_server/carousel-sd-server "$@"
