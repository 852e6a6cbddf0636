#!/usr/bin/env bash
# Builds carousel and runs the main example. Usage: scripts/run.sh [args for the example]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_TESTS=OFF -DCAROUSEL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build -j"$(nproc)" --target carousel-quickstart
exec build/examples/quickstart/carousel-quickstart "$@"
