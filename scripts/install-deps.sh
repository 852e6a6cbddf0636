#!/usr/bin/env bash
# Installs what carousel builds with, from Debian's packages (a no-op when everything is there).
# Usage: scripts/install-deps.sh [extra Debian packages, e.g. haproxy prometheus]
set -euo pipefail
packages=(cmake g++ make pkg-config doctest-dev libbenchmark-dev nlohmann-json3-dev libcpp-httplib-dev
          libopenblas-dev libpng-dev libssl-dev zlib1g-dev libbrotli-dev clang-format "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
