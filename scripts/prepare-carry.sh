#!/usr/bin/env bash
# Fills .carry/ (git-ignored) with what scripts/gpu-check.sh needs on a GPU machine that has no Debian packages and
# no network, taken from this machine's Debian packages:
#   headers   doctest (doctest-dev), Google Benchmark (libbenchmark-dev), nlohmann json (nlohmann-json3-dev),
#             OpenBLAS's cblas.h (libopenblas-dev; the CPU backend is the GPU tests' oracle)
#   libraries libbenchmark.so.1.7.1 + libbenchmark_main.a (Debian ships no libbenchmark.a, so the shared library
#             travels), libopenblas.so.0 with its libgfortran / libquadmath
#             libpng / zlib and cpp-httplib's header (only so that the whole project configures there: tests/server
#             needs them at configure time; gpu-check.sh builds none of it)
#   CMake     minimal config files for doctest, benchmark, nlohmann_json and httplib that point into the prefix
# Everything is packed into .carry/deps.tar.xz (~6 MB) so that the working tree stays far below the 64 MiB limit.
# Also .carry/wheels/: the diffusers wheel (the version installed here, which made the test fixtures; ~6 MB, pure
# Python) for the PyTorch baseline, since the GPU machine's image has PyTorch but not diffusers. Its requirements are
# all in that image (huggingface_hub >= 1.32, safetensors >= 0.8, numpy, regex, requests, Pillow, filelock;
# importlib_metadata only below Python 3.8).
# Usage: scripts/prepare-carry.sh   (then name .carry in the device tool's `carry`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
prefix="$stage/prefix"
mkdir -p "$prefix/include" "$prefix/lib/cmake/doctest" "$prefix/lib/cmake/benchmark" "$prefix/lib/cmake/nlohmann_json" \
  "$prefix/lib/cmake/httplib"
multiarch=/usr/lib/x86_64-linux-gnu

cp -r /usr/include/doctest /usr/include/benchmark /usr/include/nlohmann "$prefix/include/"
cp /usr/include/x86_64-linux-gnu/openblas-pthread/{cblas.h,f77blas.h,openblas_config.h} "$prefix/include/"
cp "$multiarch/libbenchmark.so.1.7.1" "$multiarch/libbenchmark_main.a" "$prefix/lib/"
ln -s libbenchmark.so.1.7.1 "$prefix/lib/libbenchmark.so.1debian"
cp -L "$multiarch/openblas-pthread/libopenblas.so.0" "$prefix/lib/libopenblas.so.0"
ln -s libopenblas.so.0 "$prefix/lib/libopenblas.so"
cp -L "$multiarch/libgfortran.so.5" "$multiarch/libquadmath.so.0" "$prefix/lib/"
cp -L /usr/include/png.h /usr/include/pngconf.h /usr/include/pnglibconf.h /usr/include/zlib.h /usr/include/zconf.h \
  /usr/include/httplib.h "$prefix/include/"
cp -L "$multiarch/libpng16.so.16" "$multiarch/libz.so.1" "$prefix/lib/"
ln -s libpng16.so.16 "$prefix/lib/libpng16.so"
ln -s libpng16.so.16 "$prefix/lib/libpng.so"
ln -s libz.so.1 "$prefix/lib/libz.so"

header_only_package() {  # header_only_package NAME TARGET WHAT: a minimal config for a header-only package
  cat >"$prefix/lib/cmake/$1/$1Config.cmake" <<CMAKE
# Minimal $3 package (header-only) for the carried prefix.
get_filename_component(_prefix "\${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET $2)
  add_library($2 INTERFACE IMPORTED)
  set_target_properties($2 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "\${_prefix}/include")
endif()
CMAKE
}
header_only_package doctest doctest::doctest doctest
header_only_package nlohmann_json nlohmann_json::nlohmann_json "nlohmann_json 3.11.2"
header_only_package httplib httplib::httplib cpp-httplib
cat >"$prefix/lib/cmake/benchmark/benchmarkConfig.cmake" <<'CMAKE'
# Minimal Google Benchmark 1.7.1 package (Debian's shared library + benchmark_main) for the carried prefix.
get_filename_component(_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
find_package(Threads REQUIRED)
if(NOT TARGET benchmark::benchmark)
  add_library(benchmark::benchmark SHARED IMPORTED)
  set_target_properties(benchmark::benchmark PROPERTIES
    IMPORTED_LOCATION "${_prefix}/lib/libbenchmark.so.1.7.1" IMPORTED_SONAME "libbenchmark.so.1debian"
    INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include" INTERFACE_LINK_LIBRARIES Threads::Threads)
  add_library(benchmark::benchmark_main STATIC IMPORTED)
  set_target_properties(benchmark::benchmark_main PROPERTIES
    IMPORTED_LOCATION "${_prefix}/lib/libbenchmark_main.a" INTERFACE_LINK_LIBRARIES benchmark::benchmark)
endif()
CMAKE
for pkg in doctest:2.4.9 benchmark:1.7.1 nlohmann_json:3.11.2 httplib:0.11.4; do
  name="${pkg%%:*}" version="${pkg##*:}"
  cat >"$prefix/lib/cmake/$name/${name}ConfigVersion.cmake" <<CMAKE
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
CMAKE
done

mkdir -p "$root/.carry"
tar -C "$stage" -cJf "$root/.carry/deps.tar.xz" prefix
rm -rf "$root/.carry/wheels"
diffusers_version=$(python3 -c 'import importlib.metadata as m; print(m.version("diffusers"))')
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$root/.carry/wheels" \
  "diffusers==$diffusers_version"
ls -la "$root/.carry/deps.tar.xz" "$root/.carry/wheels"
