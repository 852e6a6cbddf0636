#!/usr/bin/env bash
# Builds carousel (warnings as errors) and runs every test. Usage: scripts/test.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
build=${1:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCAROUSEL_BUILD_TESTS=ON -DCAROUSEL_BUILD_EXAMPLES=ON \
      -DCAROUSEL_BUILD_BENCHMARKS=ON
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
