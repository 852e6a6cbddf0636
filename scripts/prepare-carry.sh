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
# Everything is packed into .carry/deps.tar.xz (~10 MB) so that the working tree stays far below the 64 MiB limit.
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

cat >"$prefix/lib/cmake/doctest/doctestConfig.cmake" <<'CMAKE'
# Minimal doctest package (header-only) for the carried prefix.
get_filename_component(_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET doctest::doctest)
  add_library(doctest::doctest INTERFACE IMPORTED)
  set_target_properties(doctest::doctest PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include")
endif()
CMAKE
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
cat >"$prefix/lib/cmake/nlohmann_json/nlohmann_jsonConfig.cmake" <<'CMAKE'
# Minimal nlohmann_json 3.11.2 package (header-only) for the carried prefix.
get_filename_component(_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET nlohmann_json::nlohmann_json)
  add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED)
  set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include")
endif()
CMAKE
cat >"$prefix/lib/cmake/httplib/httplibConfig.cmake" <<'CMAKE'
# Minimal cpp-httplib package (header only) for the carried prefix.
get_filename_component(_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET httplib::httplib)
  add_library(httplib::httplib INTERFACE IMPORTED)
  set_target_properties(httplib::httplib PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_prefix}/include")
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
ls -la "$root/.carry/deps.tar.xz"
